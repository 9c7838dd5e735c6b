"""Fixtures of the audit tests: one database per backend, events to record, and a forger."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select, update

from voicemesh.audit.chain import GENESIS, ChainEntry, canonical_json, row_hash
from voicemesh.audit.models import HEAD, LOG, AuditRecord
from voicemesh.common.runtime.db import Database

_ids = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on a real PostgreSQL (a fresh database each time)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def make_entry() -> Callable[..., ChainEntry]:
    def make(
        tenant: str, call_id: str | None = "call-1", event_type: str = "call.ringing"
    ) -> ChainEntry:
        n = next(_ids)
        payload = {"event_id": f"e{n}", "tenant": tenant, "type": event_type, "n": n}
        return ChainEntry(
            tenant=tenant,
            event_id=f"e{n}",
            event_type=event_type,
            call_id=call_id,
            source="test",
            subject=f"subject-{n}",
            occurred_at=f"2030-01-01T00:00:{n % 60:02d}.000000Z",
            payload=canonical_json(payload),
        )

    return make


async def _rewrite_chain(db: Database, tenant: str) -> None:
    """What a writer of the table can do: change every row and recompute every hash and
    the head, so the chain links up again from the first row to the head."""
    prev = GENESIS
    async with db.session() as session, session.begin():
        rows = (
            await session.execute(
                select(AuditRecord).where(LOG.c.tenant == tenant).order_by(LOG.c.seq)
            )
        ).scalars()
        for row in list(rows):
            forged = ChainEntry(**{**vars(row.entry()), "payload": '{"forged":true}'})
            digest = row_hash(forged, recorded_at=row.recorded_at, prev_hash=prev)
            await session.execute(
                update(LOG)
                .where(LOG.c.tenant == tenant, LOG.c.seq == row.seq)
                .values(payload=forged.payload, prev_hash=prev, hash=digest)
            )
            prev = digest
        await session.execute(update(HEAD).where(HEAD.c.tenant == tenant).values(hash=prev))


@pytest.fixture
def rewrite_chain() -> Callable[[Database, str], Awaitable[None]]:
    return _rewrite_chain
