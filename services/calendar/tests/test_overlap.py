"""Booked time ranges never overlap, whatever the hours or slot length were when each was made.

Overlaps are counted by ``overlapping_pairs``: a self-join over the stored rows through the
database's own driver (``sqlite3``, ``asyncpg``), not through the calendar's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from voicemesh.calendar.schema import OverlappingBookings
from voicemesh.calendar.store import Calendar, Hours
from voicemesh.common.contracts.events import ToolErrorCode
from voicemesh.common.contracts.tools import (
    AppointmentResult,
    BookArgs,
    RescheduleArgs,
    ToolFailure,
)

from .conftest import BASE_DAY, StartCalendar

OVERLAPS = """
    SELECT count(*) FROM calendar_appointments a
    JOIN calendar_appointments b
      ON a.tenant = b.tenant AND a.id < b.id
     AND a.slot_start < b.slot_end AND b.slot_start < a.slot_end
    WHERE a.status = 'booked' AND b.status = 'booked'
"""
DAY = BASE_DAY + timedelta(days=3)
EVERY_DAY = "mon,tue,wed,thu,fri,sat,sun"


async def overlapping_pairs(database_url: str) -> int:
    """How many pairs of booked appointments of one tenant overlap in time."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return int(conn.execute(OVERLAPS).fetchone()[0])
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval(OVERLAPS))
    finally:
        await conn.close()


async def booked_rows(database_url: str) -> list[tuple[datetime, datetime]]:
    query = "SELECT slot_start, slot_end FROM calendar_appointments WHERE status = 'booked'"
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return [
                (datetime.fromisoformat(a), datetime.fromisoformat(b))
                for a, b in conn.execute(query).fetchall()
            ]
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [(r[0], r[1]) for r in await conn.fetch(query)]
    finally:
        await conn.close()


def at(hours: Hours, clock: str, day: date = DAY) -> datetime:
    return datetime.combine(day, time.fromisoformat(clock), tzinfo=hours.zone).astimezone(UTC)


def grid(hours: Hours, first: str, count: int) -> list[datetime]:
    start = at(hours, first)
    return [start + i * hours.slot for i in range(count)]


async def attempt(calendar: Calendar, tenant: str, start: datetime, key: str) -> str:
    args = BookArgs(start=start, name="Ada", phone="+15555550100", idempotency_key=key)
    try:
        await calendar.book(tenant, args)
    except ToolFailure as failure:
        return failure.tool_code.value
    return "ok"


async def test_no_overlap_across_a_slot_length_change(
    start_calendar: StartCalendar, database_url: str
) -> None:
    """100 concurrent bookings, half on the old 30-minute grid (a replica whose hours are
    still cached) and half on the new 45-minute one: none of the stored ranges overlap."""
    first = await start_calendar(database_url, open_time="08:00", close_time="20:00")
    second = await start_calendar(
        database_url, tenant=first.tenant, open_time="08:00", close_time="20:00"
    )
    tenant, changed, stale = first.tenant, first.service.get(Calendar), second.service.get(Calendar)
    old = await stale.hours(tenant)  # this replica keeps the 30-minute grid for a while
    assert old.slot_minutes == 30
    # Booked before the change: 10:00-10:30.
    assert await attempt(changed, tenant, at(old, "10:00"), "before") == "ok"
    new = await changed.set_hours(
        tenant, Hours.build(old.time_zone, time(8), time(20), EVERY_DAY, 45)
    )
    # The case: after the change 10:15-11:00 is a slot, and it overlaps 10:00-10:30.
    assert at(new, "10:15") in new.slots_on(DAY)
    assert await attempt(changed, tenant, at(new, "10:15"), "after") == "slot_taken"

    # 30-minute starts 08:30-12:30 and 45-minute starts 10:15-14:00: most ranges collide with
    # some range of the other grid; 08:30 and 13:15/14:00 collide with none of it.
    thirty = [at(old, "08:30"), *grid(old, "10:30", 5)]
    forty_five = grid(new, "10:15", 6)
    calls = [(stale, s, f"thirty-{i}") for i, s in enumerate(thirty * 9)][:50]
    calls += [(changed, s, f"forty-five-{i}") for i, s in enumerate(forty_five * 9)][:50]
    random.Random(6).shuffle(calls)
    outcomes = await asyncio.gather(*(attempt(c, tenant, s, k) for c, s, k in calls))

    assert set(outcomes) <= {"ok", "slot_taken"}, Counter(outcomes)
    assert await overlapping_pairs(database_url) == 0
    rows = await booked_rows(database_url)
    assert len(rows) == 1 + outcomes.count("ok")
    lengths = Counter(int((end - start).total_seconds()) // 60 for start, end in rows)
    assert lengths[30] >= 2 and lengths[45] >= 2, lengths  # both grids did book
    assert max(changed.bookings.largest_batch, stale.bookings.largest_batch) > 1


async def test_cancelled_ranges_free_up_and_reschedules_cannot_overlap(
    start_calendar: StartCalendar, database_url: str
) -> None:
    cal = await start_calendar(database_url, open_time="08:00", close_time="20:00")
    calendar = cal.service.get(Calendar)
    old = await calendar.hours(cal.tenant)
    args = BookArgs(start=at(old, "10:00"), name="Ada", idempotency_key="first")
    booked = (await calendar.book(cal.tenant, args)).appointment
    other = BookArgs(start=at(old, "11:00"), name="Bo", idempotency_key="other")
    blocker = (await calendar.book(cal.tenant, other)).appointment
    new = await calendar.set_hours(
        cal.tenant, Hours.build(old.time_zone, time(8), time(20), EVERY_DAY, 45)
    )

    # 10:15-11:00 overlaps the booking 10:00-10:30 ...
    assert await attempt(calendar, cal.tenant, at(new, "10:15"), "k1") == "slot_taken"
    # ... and moving the 11:00-11:30 booking onto it is refused the same way.
    with pytest.raises(ToolFailure) as refused:
        await calendar.reschedule(
            cal.tenant,
            RescheduleArgs(appointment_id=blocker.appointment_id, start=at(new, "10:15")),
        )
    assert refused.value.tool_code is ToolErrorCode.SLOT_TAKEN
    # Availability does not offer what booking would refuse.
    free = {s.start for s in (await calendar.availability(cal.tenant, DAY, 1)).slots}
    assert not {at(new, c) for c in ("09:30", "10:15", "11:00")} & free
    assert {at(new, "08:45"), at(new, "11:45")} <= free

    # Once cancelled, 10:00-10:30 no longer blocks 10:15-11:00; 11:00-11:30 only touches it.
    await calendar.cancel(cal.tenant, booked.appointment_id)
    result = await calendar.book(
        cal.tenant, BookArgs(start=at(new, "10:15"), name="Cy", idempotency_key="k2")
    )
    assert isinstance(result, AppointmentResult) and result.created
    assert await overlapping_pairs(database_url) == 0


# The appointments table as versions before the no-overlap rule created it (their create_all):
# no exclusion constraint, no triggers, only the unique start of a booked slot.
OLD_TABLE = """
CREATE TABLE calendar_appointments (
    id VARCHAR(32) NOT NULL PRIMARY KEY,
    tenant VARCHAR(63) NOT NULL,
    slot_start {stamp} NOT NULL,
    slot_end {stamp} NOT NULL,
    status VARCHAR(16) NOT NULL,
    name VARCHAR(128) NOT NULL,
    phone VARCHAR(16),
    contact_id VARCHAR(64),
    listing_id VARCHAR(64),
    notes VARCHAR(1000) NOT NULL,
    idempotency_key VARCHAR(128) NOT NULL,
    call_id VARCHAR(64),
    created_at {stamp} NOT NULL,
    updated_at {stamp} NOT NULL,
    CONSTRAINT uq_calendar_idempotency UNIQUE (tenant, idempotency_key)
)
"""
OLD_INDEXES = (
    "CREATE INDEX ix_calendar_appointments_tenant ON calendar_appointments (tenant)",
    "CREATE UNIQUE INDEX uq_calendar_booked_slot ON calendar_appointments (tenant, slot_start)"
    " WHERE status = 'booked'",
)
OLD_ROW = (
    "INSERT INTO calendar_appointments (id, tenant, slot_start, slot_end, status, name, notes,"
    " idempotency_key, created_at, updated_at) VALUES ({marks})"
)


async def old_database(database_url: str, rows: list[tuple[str, str, datetime, int, str]]) -> None:
    """A database as an older calendar left it, holding ``(id, tenant, start, minutes, status)``."""
    now = datetime.now(UTC)
    values = [
        (id_, tenant, start, start + timedelta(minutes=minutes), status, "Old", "", id_, now, now)
        for id_, tenant, start, minutes, status in rows
    ]
    if database_url.startswith("sqlite"):

        def stamp(moment: datetime) -> str:  # how SQLAlchemy writes a DATETIME on SQLite
            return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

        path = database_url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(OLD_TABLE.format(stamp="DATETIME"))
            for index in OLD_INDEXES:
                conn.execute(index)
            conn.executemany(
                OLD_ROW.format(marks=", ".join("?" * 10)),
                [tuple(stamp(v) if isinstance(v, datetime) else v for v in r) for r in values],
            )
        return
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(OLD_TABLE.format(stamp="TIMESTAMP WITH TIME ZONE"))
        for index in OLD_INDEXES:
            await conn.execute(index)
        marks = ", ".join(f"${i}" for i in range(1, 11))
        await conn.executemany(OLD_ROW.format(marks=marks), values)
    finally:
        await conn.close()


async def test_a_database_from_an_older_version_gets_the_rule(
    start_calendar: StartCalendar, database_url: str, unique: Callable[[str], str]
) -> None:
    tenant = unique("t")
    zone = ZoneInfo("America/New_York")  # the tenant's zone (``tenant:salon`` has the default)
    ten = datetime.combine(DAY, time(10), tzinfo=zone).astimezone(UTC)
    await old_database(
        database_url,
        [
            ("old-booked", tenant, ten, 30, "booked"),  # 10:00-10:30
            ("old-cancelled", tenant, ten + timedelta(hours=1), 60, "cancelled"),  # 11:00-12:00
        ],
    )
    cal = await start_calendar(database_url, tenant, open_time="08:00", close_time="20:00")
    calendar = cal.service.get(Calendar)
    old = await calendar.hours(tenant)
    assert old.time_zone == "America/New_York"
    new = await calendar.set_hours(
        tenant, Hours.build(old.time_zone, time(8), time(20), EVERY_DAY, 45)
    )
    assert await attempt(calendar, tenant, at(new, "10:15"), "k1") == "slot_taken"
    assert await attempt(calendar, tenant, at(new, "11:00"), "k2") == "ok"  # cancelled: free
    assert await overlapping_pairs(database_url) == 0
    # A second start on the same database finds the rule in place and leaves it alone.
    again = await start_calendar(database_url, tenant, open_time="08:00", close_time="20:00")
    await again.service.get(Calendar).set_hours(tenant, new)
    assert (
        await attempt(again.service.get(Calendar), tenant, at(new, "09:30"), "k3") == "slot_taken"
    )
    assert await overlapping_pairs(database_url) == 0


async def test_an_older_database_that_already_overlaps_is_refused_by_name(
    start_calendar: StartCalendar, database_url: str, unique: Callable[[str], str]
) -> None:
    tenant = unique("t")
    ten = datetime.combine(DAY, time(10), tzinfo=UTC)
    await old_database(
        database_url,
        [
            ("clash-a", tenant, ten, 30, "booked"),
            ("clash-b", tenant, ten + timedelta(minutes=15), 45, "booked"),
            ("apart", tenant, ten + timedelta(hours=2), 30, "booked"),
        ],
    )
    with pytest.raises(OverlappingBookings) as refused:
        await start_calendar(database_url, tenant)
    assert refused.value.pairs == [("clash-a", "clash-b")]
    assert "clash-a/clash-b" in str(refused.value)
