"""The hash chain on a real database: idempotent appends, concurrent writers, tamper evidence.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import delete, select, text, update

from voicemesh.audit.chain import ChainEntry
from voicemesh.audit.models import HEAD, LOG, AuditRecord
from voicemesh.audit.store import AuditStore, RecordQuery
from voicemesh.audit.verify import verify_chain, verify_database
from voicemesh.common.runtime.db import Database


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    async with Database(database_url) as db:
        yield AuditStore(db)


async def _rows(store: AuditStore, tenant: str) -> list[AuditRecord]:
    return await store.records(RecordQuery(tenant, limit=10_000))


async def test_appends_link_rows_and_redelivery_records_nothing_twice(
    store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    entries = [make_entry("acme") for _ in range(5)]
    first = await store.append(entries[:3])
    assert first == {("acme", e.event_id) for e in entries[:3]}
    # a redelivered batch overlapping the recorded one, with one event twice in it
    second = await store.append([entries[2], entries[3], entries[3], entries[4]])
    assert second == {("acme", entries[3].event_id), ("acme", entries[4].event_id)}

    rows = await _rows(store, "acme")
    assert [r.event_id for r in rows] == [e.event_id for e in entries]
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    report = await verify_chain(store.db, "acme")
    assert report.ok and report.rows == 5 and report.head_hash == rows[-1].hash


async def test_tenants_have_separate_chains(
    store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    await store.append([make_entry("acme"), make_entry("homes"), make_entry("acme")])
    assert [r.seq for r in await _rows(store, "acme")] == [1, 2]
    assert [r.seq for r in await _rows(store, "homes")] == [1]
    reports = await verify_database(store.db)
    assert [(r.tenant, r.ok, r.rows) for r in reports] == [("acme", True, 2), ("homes", True, 1)]


async def test_concurrent_writers_never_fork_the_chain(
    database_url: str, store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    # Four independent stores (as four replicas would have), each with its own engine.
    others = [Database(database_url) for _ in range(3)]
    writers = [store, *(AuditStore(db) for db in others)]
    try:
        batches = [[make_entry("acme") for _ in range(10)] for _ in range(12)]
        results = await asyncio.gather(
            *(writers[i % len(writers)].append(batch) for i, batch in enumerate(batches))
        )
    finally:
        for db in others:
            await db.close()
    assert sum(len(r) for r in results) == 120
    rows = await _rows(store, "acme")
    assert [r.seq for r in rows] == list(range(1, 121))
    assert len({r.event_id for r in rows}) == 120
    assert (await verify_chain(store.db, "acme")).ok


async def _chain(
    store: AuditStore, make_entry: Callable[..., ChainEntry], n: int
) -> list[AuditRecord]:
    await store.append([make_entry("acme") for _ in range(n)])
    return await _rows(store, "acme")


async def test_a_changed_row_is_named(
    store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    rows = await _chain(store, make_entry, 6)
    async with store.db.session() as session, session.begin():
        await session.execute(
            update(LOG).where(LOG.c.tenant == "acme", LOG.c.seq == 4).values(source="forged")
        )
    report = await verify_chain(store.db, "acme")
    assert not report.ok and report.first_bad_seq == 4
    assert f"row seq 4 (event {rows[3].event_id}" in report.problem and "changed" in report.problem


async def test_a_changed_and_rehashed_row_is_named(
    store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    """Recomputing the edited row's own hash does not hide it: the next row disagrees."""
    from voicemesh.audit.chain import row_hash

    rows = await _chain(store, make_entry, 6)
    forged = rows[2].entry()
    forged = ChainEntry(**{**forged.__dict__, "payload": '{"forged":true}'})
    digest = row_hash(forged, recorded_at=rows[2].recorded_at, prev_hash=rows[2].prev_hash)
    async with store.db.session() as session, session.begin():
        await session.execute(
            update(LOG)
            .where(LOG.c.tenant == "acme", LOG.c.seq == 3)
            .values(payload=forged.payload, hash=digest)
        )
    report = await verify_chain(store.db, "acme")
    assert not report.ok and report.first_bad_seq == 3, report.problem
    assert f"row seq 3 (event {rows[2].event_id}" in report.problem


async def test_a_removed_row_is_named(
    store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    await _chain(store, make_entry, 6)
    async with store.db.session() as session, session.begin():
        await session.execute(delete(LOG).where(LOG.c.tenant == "acme", LOG.c.seq == 2))
    report = await verify_chain(store.db, "acme")
    assert not report.ok and report.first_bad_seq == 2
    assert "row seq 2 was removed" in report.problem


async def test_rows_cut_off_the_end_are_named(
    store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    await _chain(store, make_entry, 6)
    async with store.db.session() as session, session.begin():
        await session.execute(delete(LOG).where(LOG.c.tenant == "acme", LOG.c.seq >= 5))
    report = await verify_chain(store.db, "acme")
    assert not report.ok and report.first_bad_seq == 5
    assert "rows seq 5..6 was removed from the end" in report.problem


async def test_reordered_rows_are_named(
    store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    rows = await _chain(store, make_entry, 6)
    async with store.db.session() as session, session.begin():
        # swap the positions of seq 3 and 4 (via a free seq, the key is unique)
        for old, new in ((3, 1000), (4, 3), (1000, 4)):
            await session.execute(
                update(LOG).where(LOG.c.tenant == "acme", LOG.c.seq == old).values(seq=new)
            )
    report = await verify_chain(store.db, "acme")
    assert not report.ok and report.first_bad_seq == 3
    assert f"row seq 3 (event {rows[3].event_id}" in report.problem
    assert "reordered" in report.problem


async def test_head_swap_is_atomic_with_the_rows(
    store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    await _chain(store, make_entry, 3)
    async with store.db.session() as session:
        head = (await session.execute(select(HEAD.c.seq, HEAD.c.hash))).one()
        last = (await session.execute(text("select max(seq) from audit_log"))).scalar_one()
    assert head.seq == last == 3
