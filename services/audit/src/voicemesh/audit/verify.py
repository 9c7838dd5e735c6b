"""``python -m voicemesh.audit verify``: walk each tenant's chain and name the first bad row.

Exit status 0 and ``OK`` when every chain verifies; 1 and the first row that was changed,
removed or reordered otherwise; 2 when the database cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from voicemesh.audit.chain import GENESIS, row_hash
from voicemesh.audit.models import HEAD, LOG, AuditHead, AuditRecord
from voicemesh.common.runtime.db import Database

__all__ = ["ChainReport", "main", "verify_chain", "verify_database"]

PAGE = 2000


@dataclass(frozen=True)
class ChainReport:
    tenant: str
    rows: int
    ok: bool
    problem: str = ""
    first_bad_seq: int | None = None
    head_hash: str = GENESIS

    def line(self) -> str:
        if self.ok:
            return f"OK {self.tenant}: {self.rows} rows, head {self.head_hash[:16]}"
        return f"FAILED {self.tenant}: {self.problem}"


async def _rows(db: Database, tenant: str) -> AsyncIterator[AuditRecord]:
    """The tenant's rows in position order, a page at a time (chains can be long)."""
    after = 0
    while True:
        async with db.session() as session:
            page = list(
                (
                    await session.execute(
                        select(AuditRecord)
                        .where(LOG.c.tenant == tenant, LOG.c.seq > after)
                        .order_by(LOG.c.seq)
                        .limit(PAGE)
                    )
                ).scalars()
            )
        if not page:
            return
        for row in page:
            yield row
        after = page[-1].seq


async def _holder_of(db: Database, tenant: str, digest: str) -> AuditRecord | None:
    async with db.session() as session:
        return (
            await session.execute(
                select(AuditRecord).where(LOG.c.tenant == tenant, LOG.c.hash == digest).limit(1)
            )
        ).scalar_one_or_none()


def _name(row: AuditRecord) -> str:
    return f"row seq {row.seq} (event {row.event_id}, {row.event_type})"


async def verify_chain(db: Database, tenant: str) -> ChainReport:
    """Check one tenant's chain from its first row to its recorded head."""
    expected_seq, prev_hash, count = 1, GENESIS, 0
    previous: AuditRecord | None = None

    def failed(problem: str, seq: int) -> ChainReport:
        return ChainReport(tenant, count, False, problem, seq, prev_hash)

    async for row in _rows(db, tenant):
        if row.seq != expected_seq:
            missing = (
                f"row seq {expected_seq}"
                if row.seq == expected_seq + 1
                else f"rows seq {expected_seq}..{row.seq - 1}"
            )
            return failed(f"{missing} was removed (the chain jumps to seq {row.seq})", expected_seq)
        computed = row_hash(row.entry(), recorded_at=row.recorded_at, prev_hash=row.prev_hash)
        if computed != row.hash:
            return failed(
                f"{_name(row)} was changed: its content no longer matches its hash", row.seq
            )
        if row.prev_hash != prev_hash:
            holder = await _holder_of(db, tenant, row.prev_hash)
            if holder is not None and holder.seq != row.seq - 1:
                return failed(
                    f"{_name(row)} was reordered: it was written after seq {holder.seq} "
                    f"(event {holder.event_id})",
                    row.seq,
                )
            if previous is not None:
                return failed(
                    f"{_name(previous)} was changed, or a row after it removed: "
                    f"seq {row.seq} records a different predecessor",
                    previous.seq,
                )
            return failed(f"{_name(row)} does not start the chain", row.seq)
        previous, prev_hash = row, row.hash
        expected_seq += 1
        count += 1

    async with db.session() as session:
        head = (
            await session.execute(select(AuditHead).where(HEAD.c.tenant == tenant))
        ).scalar_one_or_none()
    if head is not None and head.seq > count:
        first = count + 1
        what = f"row seq {first}" if head.seq == first else f"rows seq {first}..{head.seq}"
        return failed(f"{what} was removed from the end (the chain head is seq {head.seq})", first)
    if head is not None and head.hash != prev_hash:
        assert previous is not None  # head.seq <= count and count > 0 here
        return failed(
            f"{_name(previous)} was changed: the chain head recorded another hash", previous.seq
        )
    if head is None and count:
        return failed("the chain head is missing", 1)
    return ChainReport(tenant, count, True, head_hash=prev_hash)


async def verify_database(db: Database, tenant: str | None = None) -> list[ChainReport]:
    """Verify ``tenant``'s chain, or every tenant's chain found in the database."""
    if tenant is not None:
        return [await verify_chain(db, tenant)]
    async with db.session() as session:
        tenants = set((await session.execute(select(HEAD.c.tenant))).scalars())
        tenants |= set((await session.execute(select(LOG.c.tenant).distinct())).scalars())
    return [await verify_chain(db, t) for t in sorted(tenants)]


async def _run(url: str, tenant: str | None) -> int:
    db = Database(url)
    try:
        reports = await verify_database(db, tenant)
    except (DBAPIError, OSError) as exc:
        print(f"cannot read the audit database: {type(exc).__name__}", file=sys.stderr)
        return 2
    finally:
        await db.close()
    if not reports:
        print("OK: no audit records")
        return 0
    for report in reports:
        print(report.line())
    return 0 if all(r.ok for r in reports) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m voicemesh.audit verify``; returns the exit status."""
    from voicemesh.audit.settings import AuditSettings

    parser = argparse.ArgumentParser(
        prog="python -m voicemesh.audit verify",
        description="Verify the audit hash chain and name the first bad row.",
    )
    parser.add_argument("--tenant", help="verify this tenant's chain only (default: every one)")
    parser.add_argument(
        "--database-url",
        help="the audit database (default: VOICEMESH_DATABASE_URL / DATABASE_URL)",
    )
    args = parser.parse_args(argv)
    url = args.database_url or AuditSettings().database_url.get_secret_value()
    return asyncio.run(_run(url, args.tenant))
