"""Group commit for bookings: one writer task commits many queued bookings per transaction.

Concurrent ``book`` calls each used to open a session, flush ORM objects and commit, one
after another behind SQLite's single-writer lock; at 20 concurrent callers they spent most
of their time queued. Here a caller queues its booking and awaits the outcome; the writer
takes everything queued (up to ``max_batch``) and writes it in one transaction of two
statements, then commits once:

* one multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING id`` for the appointments;
* one ``INSERT`` of the reminder rows of the appointments that were inserted.

The database still decides every conflict: the partial unique index on booked slots, the
unique idempotency key (see ``models``) and the rule that booked ranges never overlap (see
``schema``, checked row by row within this same statement) turn a losing row into a no-op
that is simply not returned, which affects only that booking, never the rest of its batch
(two bookings of one batch whose ranges overlap: the first row wins, as if they had come one
after the other). If the batch fails as a whole (the database is down), every booking in it
fails with ``UnavailableError`` and none is stored; an unexpected integrity error retries
the batch's bookings one by one, so a single bad row cannot sink the others. With aiosqlite
every statement is a round trip to its thread, so two statements per batch instead of two
(plus a commit) per booking is most of the gain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from voicemesh.calendar.models import Appointment, Reminder
from voicemesh.common import UnavailableError
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.tasks import OwnedTask

__all__ = ["BookingWriter"]

log = logging.getLogger(__name__)

MAX_BATCH = 64


@dataclass
class _Booking:
    appointment: dict[str, Any]
    reminder: dict[str, Any] | None
    outcome: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


class BookingWriter:
    """Owns the writer task: ``start()`` launches it, ``stop()`` cancels and awaits it.

    ``lock`` (the calendar's SQLite write lock, or ``None``) is held for each batch, so the
    calendar's other writes queue with it instead of in SQLite's busy handler.
    """

    def __init__(
        self, db: Database, lock: asyncio.Lock | None, *, max_batch: int = MAX_BATCH
    ) -> None:
        self._db = db
        self._lock = lock
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Booking] = asyncio.Queue()
        self._task = OwnedTask(self._run, name="calendar-bookings")
        #: The most bookings one transaction has held so far (for tests and curiosity).
        self.largest_batch = 0
        dialect = sqlite if db.is_sqlite else postgresql
        appointments = _table(Appointment)
        # One statement, compiled once; executed with the batch's rows, SQLAlchemy renders it
        # as a single multi-row INSERT ("insertmanyvalues") and returns the ids it inserted.
        self._insert_appointments = (
            dialect.insert(appointments).on_conflict_do_nothing().returning(appointments.c.id)
        )
        self._insert_reminders = insert(_table(Reminder))

    async def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        """Stop the writer; bookings still queued fail as unavailable; idempotent."""
        await self._task.stop()
        while not self._queue.empty():
            booking = self._queue.get_nowait()
            if not booking.outcome.done():
                booking.outcome.set_exception(UnavailableError("the calendar is shutting down"))

    async def book(self, appointment: dict[str, Any], reminder: dict[str, Any] | None) -> bool:
        """Insert one booking (and its reminder); False if a unique constraint refused it."""
        if not self._task.running:
            raise UnavailableError("the calendar's booking writer is not running")
        booking = _Booking(appointment, reminder)
        self._queue.put_nowait(booking)
        return await booking.outcome

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # A caller that gave up (its deadline passed) is not booked behind its back.
            live = [b for b in batch if not b.outcome.done()]
            if not live:
                continue
            self.largest_batch = max(self.largest_batch, len(live))
            try:
                await self._commit(live)
            except IntegrityError as exc:
                if len(live) == 1:
                    self._fail(live, self._translate(exc))
                    continue
                for booking in live:
                    try:
                        await self._commit([booking])
                    except Exception as alone:
                        self._fail([booking], self._translate(alone))
            except asyncio.CancelledError:
                self._fail(live, UnavailableError("the calendar is shutting down"))
                raise
            except Exception as exc:
                self._fail(live, self._translate(exc))

    async def _commit(self, batch: list[_Booking]) -> None:
        async with self._locked(), self._db.engine.begin() as conn:
            inserted = await self._insert(conn, batch)
        for booking in batch:
            if not booking.outcome.done():
                booking.outcome.set_result(booking.appointment["id"] in inserted)

    async def _insert(self, conn: AsyncConnection, batch: list[_Booking]) -> set[str]:
        rows = [b.appointment for b in batch]
        inserted = set((await conn.execute(self._insert_appointments, rows)).scalars().all())
        reminders = [
            b.reminder for b in batch if b.reminder is not None and b.appointment["id"] in inserted
        ]
        if reminders:
            await conn.execute(self._insert_reminders, reminders)
        return inserted

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        lock: AbstractAsyncContextManager[Any] = self._lock or nullcontext()
        async with lock:
            yield

    @staticmethod
    def _translate(exc: Exception) -> Exception:
        if isinstance(exc, IntegrityError):
            # Not a slot or key conflict (those are no-ops): a bug, reported as internal.
            # The type only: a database error's text carries the row, names and phones included.
            log.error("a booking broke a constraint other than slot or key: %s", type(exc).__name__)
            return exc
        if isinstance(exc, OperationalError | DBAPIError | OSError):
            return UnavailableError(f"calendar database unavailable: {type(exc).__name__}")
        log.error("booking batch failed unexpectedly: %s", type(exc).__name__)
        return exc

    @staticmethod
    def _fail(batch: list[_Booking], exc: Exception) -> None:
        for booking in batch:
            if not booking.outcome.done():
                booking.outcome.set_exception(exc)
