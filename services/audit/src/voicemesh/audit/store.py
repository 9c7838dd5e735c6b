"""Appending to and reading the audit log.

``AuditStore.append`` extends each tenant's chain in one transaction: it skips events
already recorded (idempotent by event id), links the new rows to the chain head and moves
the head with a compare-and-swap. A concurrent writer (another replica) makes the swap or
the ``(tenant, seq)`` key fail, and the batch is retried on the new head: the chain never
forks. ``ChainWriter`` funnels every consumer of one process through a single task, which
also batches their events into few transactions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from voicemesh.audit.chain import GENESIS, ChainEntry, iso_timestamp, row_hash
from voicemesh.audit.models import HEAD, LOG, AuditHead, AuditRecord
from voicemesh.common.contracts.errors import UnavailableError
from voicemesh.common.runtime.db import Database

__all__ = ["AuditStore", "ChainWriter", "RecordQuery"]

log = logging.getLogger(__name__)

#: Attempts when another writer moved the head (or SQLite was busy) under us.
MAX_ATTEMPTS = 8


class _HeadMoved(Exception):
    """Another writer extended the chain between our read of the head and our swap."""


@dataclass(frozen=True)
class RecordQuery:
    tenant: str
    call_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    event_type: str | None = None
    after_seq: int = 0
    limit: int = 100


class AuditStore:
    """The audit tables of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(self, entries: Sequence[ChainEntry]) -> set[tuple[str, str]]:
        """Record ``entries`` in order; return the (tenant, event id) pairs newly recorded.

        Pairs not returned were already in the log (a redelivery) and were left alone.
        """
        delay = 0.01
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.db.session() as session, session.begin():
                    return await self._append(session, entries)
            except (IntegrityError, _HeadMoved, OperationalError) as exc:
                if isinstance(exc, OperationalError) and not _is_busy(exc):
                    raise UnavailableError(f"audit database: {type(exc).__name__}") from None
                log.debug("audit chain moved under us (attempt %d); retrying", attempt)
                await asyncio.sleep(delay)
                delay = min(0.5, delay * 2)
            except (DBAPIError, OSError) as exc:
                # ``from None``: the driver's message can quote row values (event payloads).
                raise UnavailableError(f"audit database: {type(exc).__name__}") from None
        raise UnavailableError("audit chain head kept moving; giving up for now")

    async def _append(
        self, session: AsyncSession, entries: Sequence[ChainEntry]
    ) -> set[tuple[str, str]]:
        recorded: set[tuple[str, str]] = set()
        by_tenant: dict[str, list[ChainEntry]] = {}
        for entry in entries:
            by_tenant.setdefault(entry.tenant, []).append(entry)
        recorded_at = iso_timestamp(datetime.now(UTC))
        for tenant, group in by_tenant.items():
            ids = list({e.event_id for e in group})
            known = set(
                (
                    await session.execute(
                        select(LOG.c.event_id).where(
                            LOG.c.tenant == tenant, LOG.c.event_id.in_(ids)
                        )
                    )
                ).scalars()
            )
            # FOR UPDATE serialises writers of one tenant on PostgreSQL instead of letting
            # them race and retry (SQLite serialises write transactions by itself).
            head = (
                await session.execute(
                    select(AuditHead).where(HEAD.c.tenant == tenant).with_for_update()
                )
            ).scalar_one_or_none()
            seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
            rows = []
            for entry in group:
                if entry.event_id in known:
                    continue
                known.add(entry.event_id)  # the same event twice in one batch: once
                seq += 1
                digest = row_hash(entry, recorded_at=recorded_at, prev_hash=prev)
                # The entry's fields are the row's columns, plus its place in the chain.
                rows.append(
                    {
                        **vars(entry),
                        "seq": seq,
                        "recorded_at": recorded_at,
                        "prev_hash": prev,
                        "hash": digest,
                    }
                )
                prev = digest
                recorded.add((tenant, entry.event_id))
            if not rows:
                continue
            await session.execute(insert(AuditRecord), rows)
            if head is None:
                # A concurrent first writer makes this insert fail on the primary key.
                await session.execute(insert(AuditHead).values(tenant=tenant, seq=seq, hash=prev))
            else:
                moved = await session.execute(
                    update(AuditHead)
                    .where(HEAD.c.tenant == tenant, HEAD.c.seq == head.seq)
                    .values(seq=seq, hash=prev)
                )
                if moved.rowcount != 1:  # type: ignore[attr-defined]
                    raise _HeadMoved
        return recorded

    # -- reading ---------------------------------------------------------------------------

    async def records(self, query: RecordQuery) -> list[AuditRecord]:
        stmt = select(AuditRecord).where(LOG.c.tenant == query.tenant, LOG.c.seq > query.after_seq)
        if query.call_id is not None:
            stmt = stmt.where(LOG.c.call_id == query.call_id)
        if query.event_type is not None:
            stmt = stmt.where(LOG.c.event_type == query.event_type)
        if query.since is not None:
            stmt = stmt.where(LOG.c.occurred_at >= iso_timestamp(query.since))
        if query.until is not None:
            stmt = stmt.where(LOG.c.occurred_at < iso_timestamp(query.until))
        stmt = stmt.order_by(LOG.c.seq).limit(query.limit)
        try:
            async with self.db.session() as session:
                return list((await session.execute(stmt)).scalars())
        except (DBAPIError, OSError) as exc:
            raise UnavailableError(f"audit database: {type(exc).__name__}") from None

    async def count(self, tenant: str) -> int:
        async with self.db.session() as session:
            stmt = select(func.count()).select_from(LOG).where(LOG.c.tenant == tenant)
            return int((await session.execute(stmt)).scalar_one())


def _is_busy(exc: OperationalError) -> bool:
    """SQLite's "database is locked": another process holds the write lock; retry."""
    return "locked" in str(exc.orig).lower() or "busy" in str(exc.orig).lower()


class ChainWriter:
    """The one task of a process that writes to the audit log.

    Consumers ``submit`` their validated events and wait; the writer takes everything queued
    so far, appends it in one transaction and wakes each submitter with its outcome. One
    writer per process keeps the process's appends in order and out of each other's way.
    """

    def __init__(self, store: AuditStore, *, max_batch: int = 1000) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[list[ChainEntry], asyncio.Future[set[tuple[str, str]]]]]
        self._queue = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-chain-writer")

    async def stop(self) -> None:
        """Cancel the writer and fail whatever is still queued (it will be redelivered)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # gather: the writer's own CancelledError is collected, ours still propagates.
            await asyncio.gather(task, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(UnavailableError("audit writer stopped"))

    async def submit(self, entries: list[ChainEntry]) -> set[tuple[str, str]]:
        """Append ``entries``; return the (tenant, event id) pairs that were new."""
        if self._task is None:
            raise UnavailableError("audit writer is not running")
        future: asyncio.Future[set[tuple[str, str]]] = asyncio.get_running_loop().create_future()
        await self._queue.put((entries, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][0])
            while size < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item[0])
            entries = [e for items, _ in batch for e in items]
            try:
                recorded = await self._store.append(entries)
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(UnavailableError("audit writer stopped"))
                raise
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for items, future in batch:
                if not future.done():
                    mine = {(e.tenant, e.event_id) for e in items}
                    future.set_result(recorded & mine)
