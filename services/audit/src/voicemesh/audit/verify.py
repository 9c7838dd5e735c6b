"""``python -m voicemesh.audit verify``: walk each tenant's chain and name the first bad row.

With ``--public-key`` it also checks the chain against signed heads (``--signed-heads``, a
file of them, and/or ``--heads-from-nats``, every one the EVENTS stream holds): a head
whose signature does not verify is refused, and the chain must have the signed hash at
each signed seq, which a rewrite of the whole table with recomputed hashes cannot fake.

Exit status 0 and ``OK`` when every chain verifies; 1 and the first row that was changed,
removed or reordered (or the signed head it contradicts) otherwise; 2 when the database
or the heads cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from voicemesh.audit.anchor import (
    AuditHeadSigned,
    fetch_heads,
    key_id,
    load_public_key,
    read_heads,
    signature_valid,
)
from voicemesh.audit.chain import GENESIS, row_hash
from voicemesh.audit.models import HEAD, LOG, AuditHead, AuditRecord
from voicemesh.common.contracts.errors import UnavailableError
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.settings import NatsSettings

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
    anchored_by: AuditHeadSigned | None = None

    def line(self) -> str:
        if not self.ok:
            return f"FAILED {self.tenant}: {self.problem}"
        line = f"OK {self.tenant}: {self.rows} rows, head {self.head_hash[:16]}"
        if self.anchored_by is not None:
            line += f"; seq {self.anchored_by.seq} matches {self.anchored_by.name()}"
        return line


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


async def verify_chain(
    db: Database, tenant: str, anchors: Sequence[AuditHeadSigned] = ()
) -> ChainReport:
    """Check one tenant's chain from its first row to its recorded head.

    ``anchors`` are signed heads of ``tenant`` whose signatures the caller has checked;
    the chain must have each one's hash at its seq.
    """
    expected_seq, prev_hash, count = 1, GENESIS, 0
    previous: AuditRecord | None = None
    pinned = {a.seq for a in anchors}
    hash_at: dict[int, str] = {}

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
        if row.seq in pinned:
            hash_at[row.seq] = row.hash
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
    return _against_anchors(ChainReport(tenant, count, True, head_hash=prev_hash), anchors, hash_at)


def _against_anchors(
    report: ChainReport, anchors: Sequence[AuditHeadSigned], hash_at: dict[int, str]
) -> ChainReport:
    """``report`` of a chain that links up, checked against its signed heads."""
    trusted = 0  # the highest seq whose signed hash the chain still has
    anchored_by = None
    for anchor in sorted(anchors, key=lambda a: (a.seq, a.signed_at)):
        if anchor.seq > report.rows:
            first = report.rows + 1
            what = (
                f"row seq {first} was"
                if anchor.seq == first
                else f"rows seq {first}..{anchor.seq} were"
            )
            return _failed(
                report,
                f"{what} removed: the chain ends at seq {report.rows} "
                f"but {anchor.name()} covers them",
                first,
            )
        if hash_at[anchor.seq] != anchor.head_hash:
            first = trusted + 1
            return _failed(
                report,
                f"rows seq {first}..{anchor.seq} were rewritten: the chain's hash at seq "
                f"{anchor.seq} differs from {anchor.name()}",
                first,
            )
        trusted, anchored_by = anchor.seq, anchor
    return ChainReport(
        report.tenant, report.rows, True, head_hash=report.head_hash, anchored_by=anchored_by
    )


def _failed(report: ChainReport, problem: str, seq: int) -> ChainReport:
    return ChainReport(report.tenant, report.rows, False, problem, seq, report.head_hash)


async def verify_database(
    db: Database, tenant: str | None = None, anchors: Sequence[AuditHeadSigned] | None = None
) -> list[ChainReport]:
    """Verify ``tenant``'s chain, or every tenant's chain found in the database.

    With ``anchors`` (signed heads whose signatures were checked), each chain is checked
    against its tenant's heads, and a tenant with none fails: there is nothing to pin it.
    """
    if tenant is not None:
        tenants = {tenant}
    else:
        async with db.session() as session:
            tenants = set((await session.execute(select(HEAD.c.tenant))).scalars())
            tenants |= set((await session.execute(select(LOG.c.tenant).distinct())).scalars())
        tenants |= {a.tenant for a in anchors or ()}
    reports = []
    for name in sorted(tenants):
        mine = [a for a in anchors or () if a.tenant == name]
        if anchors is not None and not mine:
            reports.append(
                ChainReport(name, 0, False, "no signed head of this tenant to check against")
            )
            continue
        reports.append(await verify_chain(db, name, mine))
    return reports


@dataclass(frozen=True)
class _Anchoring:
    """Where the signed heads come from, and the key they must verify with."""

    public_key: Path
    heads_file: Path | None
    from_nats: bool


async def _signed_heads(anchoring: _Anchoring, tenant: str | None) -> list[AuditHeadSigned]:
    heads = read_heads(anchoring.heads_file) if anchoring.heads_file is not None else []
    if anchoring.from_nats:
        heads += await fetch_heads(NatsSettings(), tenant)
    return [h for h in heads if tenant is None or h.tenant == tenant]


async def _run(url: str, tenant: str | None, anchoring: _Anchoring | None) -> int:
    anchors: list[AuditHeadSigned] | None = None
    refused: list[str] = []
    if anchoring is not None:
        try:
            key = load_public_key(anchoring.public_key.read_bytes())
            heads = await _signed_heads(anchoring, tenant)
        except (OSError, ValueError, UnavailableError) as exc:
            print(f"cannot read the signed heads or the key: {exc}", file=sys.stderr)
            return 2
        anchors = [h for h in heads if signature_valid(h, key)]
        refused = [
            f"FAILED {h.tenant}: {h.name()} is refused: {_why_forged(h, key)}"
            for h in heads
            if h not in anchors
        ]
    db = Database(url)
    try:
        reports = await verify_database(db, tenant, anchors)
    except (DBAPIError, OSError) as exc:
        print(f"cannot read the audit database: {type(exc).__name__}", file=sys.stderr)
        return 2
    finally:
        await db.close()
    for line in refused:
        print(line)
    if not reports and not refused:
        print("OK: no audit records")
        return 0
    for report in reports:
        print(report.line())
    return 0 if all(r.ok for r in reports) and not refused else 1


def _why_forged(head: AuditHeadSigned, key: Ed25519PublicKey) -> str:
    if head.key_id != key_id(key):
        return f"its signature does not verify: signed by another key, not {key_id(key)}"
    return "its signature does not verify with the given public key (forged or altered)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m voicemesh.audit verify``; returns the exit status."""
    from voicemesh.audit.settings import AuditSettings

    parser = argparse.ArgumentParser(
        prog="python -m voicemesh.audit verify",
        description="Verify the audit hash chain and name the first bad row; with a public "
        "key, also against the signed heads.",
    )
    parser.add_argument("--tenant", help="verify this tenant's chain only (default: every one)")
    parser.add_argument(
        "--database-url",
        help="the audit database (default: VOICEMESH_DATABASE_URL / DATABASE_URL)",
    )
    parser.add_argument(
        "--public-key", type=Path, help="PEM of the audit signing key's public half"
    )
    parser.add_argument(
        "--signed-heads", type=Path, help="a file of signed heads, one JSON head a line"
    )
    parser.add_argument(
        "--heads-from-nats",
        action="store_true",
        help="every signed head the EVENTS stream holds (NATS from VOICEMESH_NATS_*; "
        "needs read access to the stream, e.g. the admin user)",
    )
    args = parser.parse_args(argv)
    has_heads = args.signed_heads is not None or args.heads_from_nats
    if has_heads != (args.public_key is not None):
        parser.error("--public-key goes with --signed-heads and/or --heads-from-nats")
    anchoring = None
    if args.public_key is not None:
        anchoring = _Anchoring(args.public_key, args.signed_heads, args.heads_from_nats)
    url = args.database_url or AuditSettings().database_url.get_secret_value()
    return asyncio.run(_run(url, args.tenant, anchoring))
