"""The database's own refusal of overlapping bookings, added at startup to new and old tables.

A unique start (``models``) is not enough once hours or the slot length change: 10:00-10:30
and, on a 45-minute grid, 10:15-11:00 start apart and still overlap. So every database the
calendar opens gets, once, the rule that a tenant's booked ranges ``[slot_start, slot_end)``
never overlap (a cancelled appointment's range is free again):

* PostgreSQL: the exclusion constraint ``calendar_no_overlap`` (``btree_gist`` supplies ``=``
  on the tenant in a GiST index). ``INSERT … ON CONFLICT DO NOTHING`` treats an overlap like
  a duplicate; an ``UPDATE`` into an overlap fails with an integrity error.
* SQLite: triggers that run inside the writing statement, under SQLite's write lock, so two
  writers (tasks, engines or processes) cannot both pass the check. An overlapping ``INSERT``
  row is dropped (``RAISE(IGNORE)``, which ``RETURNING`` reports like ``DO NOTHING``); an
  overlapping ``UPDATE`` aborts with an integrity error.

``create_all`` never alters an existing table, so this runs after it on every start and adds
what is missing. A database that already holds overlapping booked appointments (possible
with versions before this rule) cannot take the rule: the calendar refuses to start with
``OverlappingBookings`` naming them, for an operator to cancel or move one of each pair.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from voicemesh.common import UnavailableError
from voicemesh.common.contracts.errors import PermanentError
from voicemesh.common.runtime.db import Database

__all__ = ["OverlappingBookings", "ensure_no_overlap"]

log = logging.getLogger(__name__)

CONSTRAINT = "calendar_no_overlap"
# Any constant: concurrent replicas starting on one PostgreSQL add the constraint one by one.
_MIGRATION_LOCK = 0x0CA1E4DA

_OVERLAPPING = text(
    """
    SELECT a.id, b.id FROM calendar_appointments a
    JOIN calendar_appointments b
      ON a.tenant = b.tenant AND a.id < b.id
     AND a.slot_start < b.slot_end AND b.slot_start < a.slot_end
    WHERE a.status = 'booked' AND b.status = 'booked'
    LIMIT 20
    """
)

_POSTGRES_CONSTRAINT = f"""
    ALTER TABLE calendar_appointments ADD CONSTRAINT {CONSTRAINT}
    EXCLUDE USING gist (tenant WITH =, tstzrange(slot_start, slot_end) WITH &&)
    WHERE (status = 'booked')
"""

# ``NEW.slot_start < slot_end AND slot_start < NEW.slot_end``: half-open ranges, so back-to-back
# appointments touch without overlapping. Times are UTC text of one fixed format (SQLAlchemy's),
# which compares in time order.
_SQLITE_OVERLAP = """
    NEW.status = 'booked' AND EXISTS (
        SELECT 1 FROM calendar_appointments
        WHERE tenant = NEW.tenant AND status = 'booked' AND id != NEW.id
          AND slot_start < NEW.slot_end AND NEW.slot_start < slot_end
    )
"""
_SQLITE_TRIGGERS = (
    f"""
    CREATE TRIGGER IF NOT EXISTS {CONSTRAINT}_insert
    BEFORE INSERT ON calendar_appointments
    WHEN {_SQLITE_OVERLAP}
    BEGIN SELECT RAISE(IGNORE); END
    """,
    f"""
    CREATE TRIGGER IF NOT EXISTS {CONSTRAINT}_update
    BEFORE UPDATE OF tenant, slot_start, slot_end, status ON calendar_appointments
    WHEN {_SQLITE_OVERLAP}
    BEGIN SELECT RAISE(ABORT, 'calendar booking overlaps another'); END
    """,
)


class OverlappingBookings(PermanentError):
    """The database already holds overlapping booked appointments; a person must choose."""

    code = "conflict"

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        shown = ", ".join(f"{a}/{b}" for a, b in pairs)
        super().__init__(
            "the calendar database holds overlapping booked appointments (by id: "
            f"{shown}); cancel or reschedule one of each pair, then start the calendar again"
        )
        self.pairs = pairs


async def ensure_no_overlap(db: Database) -> None:
    """Give the calendar's table its no-overlap rule if it lacks it (idempotent)."""
    try:
        async with db.engine.begin() as conn:
            if db.is_sqlite:
                await _sqlite(conn)
            else:
                await _postgres(conn)
    except DBAPIError as exc:
        # Not translated to "unavailable" blindly: a missing btree_gist (contrib not
        # installed, or no right to create it) is the usual cause and needs a person.
        raise UnavailableError(
            f"could not add the calendar's no-overlap rule ({type(exc).__name__}); on "
            "PostgreSQL the btree_gist extension must be installed or creatable"
        ) from exc


async def _refuse_existing_overlaps(conn: AsyncConnection) -> None:
    pairs = [(str(a), str(b)) for a, b in (await conn.execute(_OVERLAPPING)).all()]
    if pairs:
        raise OverlappingBookings(pairs)


async def _postgres(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    present = await conn.scalar(
        text(
            "SELECT 1 FROM pg_constraint WHERE conname = :name"
            " AND conrelid = 'calendar_appointments'::regclass"
        ),
        {"name": CONSTRAINT},
    )
    if present:
        return
    await _refuse_existing_overlaps(conn)
    await conn.execute(text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
    await conn.execute(text(_POSTGRES_CONSTRAINT))
    log.info("added the calendar's no-overlap constraint")


async def _sqlite(conn: AsyncConnection) -> None:
    present = await conn.scalar(
        text(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
            " AND name IN (:on_insert, :on_update)"
        ),
        {"on_insert": f"{CONSTRAINT}_insert", "on_update": f"{CONSTRAINT}_update"},
    )
    if present == len(_SQLITE_TRIGGERS):
        return
    await _refuse_existing_overlaps(conn)
    for trigger in _SQLITE_TRIGGERS:
        await conn.execute(text(trigger))
    log.info("added the calendar's no-overlap triggers")
