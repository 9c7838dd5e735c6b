"""Business hours, availability and bookings: the calendar's rules over its tables.

Booking inserts and lets the database's constraints decide (see ``models``); an insert the
constraints refused is then read back as "same idempotency key, same booking" (the earlier
appointment is returned) or "slot taken". There is no check-then-insert window. Inserts go
through ``bookings.BookingWriter``, which commits concurrent bookings in groups.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import time as clock
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from voicemesh.calendar.bookings import BookingWriter
from voicemesh.calendar.models import Appointment, BusinessHours, Reminder, new_id
from voicemesh.calendar.schema import ensure_no_overlap
from voicemesh.calendar.settings import WEEKDAYS, CalendarSettings
from voicemesh.common import NotFound, TenantRegistry
from voicemesh.common.contracts.events import ToolErrorCode
from voicemesh.common.contracts.tools import (
    AppointmentInfo,
    AppointmentResult,
    AppointmentsResult,
    AvailabilityResult,
    BookArgs,
    ListAppointmentsArgs,
    RescheduleArgs,
    Slot,
    ToolFailure,
)
from voicemesh.common.runtime.db import Database

__all__ = ["Calendar", "Hours", "from_db", "to_db"]

HOURS_CACHE_S = 30.0


def to_db(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def from_db(moment: datetime) -> datetime:
    # SQLModel returns aware UTC; a hand-written row might be naive, and naive means UTC here.
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Hours:
    """When a tenant takes appointments, in its own time zone."""

    time_zone: str
    open_time: time
    close_time: time
    open_days: frozenset[int]
    slot_minutes: int

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def slot(self) -> timedelta:
        return timedelta(minutes=self.slot_minutes)

    def slots_on(self, day: date) -> list[datetime]:
        """Every slot start on ``day`` (local), as aware UTC datetimes."""
        if day.weekday() not in self.open_days:
            return []
        start = datetime.combine(day, self.open_time, tzinfo=self.zone)
        close = datetime.combine(day, self.close_time, tzinfo=self.zone)
        slots = []
        while start + self.slot <= close:
            slots.append(start.astimezone(UTC))
            start += self.slot
        return slots

    def is_slot(self, start: datetime) -> bool:
        local = start.astimezone(self.zone)
        return start.astimezone(UTC) in _slot_set(self, local.date())

    def describe(self) -> dict[str, object]:
        return {
            "time_zone": self.time_zone,
            "open_time": self.open_time.strftime("%H:%M"),
            "close_time": self.close_time.strftime("%H:%M"),
            "open_days": [WEEKDAYS[d] for d in sorted(self.open_days)],
            "slot_minutes": self.slot_minutes,
        }

    @classmethod
    def build(
        cls, time_zone: str, open_time: time, close_time: time, days: str, slot_minutes: int
    ) -> Hours:
        try:
            ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {time_zone!r}") from exc
        if close_time <= open_time:
            raise ValueError("close_time must be after open_time")
        names = [d.strip().lower() for d in days.split(",") if d.strip()]
        if not names or any(n not in WEEKDAYS for n in names):
            raise ValueError(f"open_days must name days among {','.join(WEEKDAYS)}")
        if not 5 <= slot_minutes <= 240:
            raise ValueError("slot_minutes must be between 5 and 240")
        return cls(
            time_zone,
            open_time,
            close_time,
            frozenset(WEEKDAYS.index(n) for n in names),
            slot_minutes,
        )


@functools.lru_cache(maxsize=1024)
def _slot_set(hours: Hours, day: date) -> frozenset[datetime]:
    # Every book and reschedule checks its slot; a day of 5-minute slots is ~300 zone
    # conversions, so each (hours, day) is worked out once.
    return frozenset(hours.slots_on(day))


def _free(
    starts: list[datetime], length: timedelta, booked: list[tuple[datetime, datetime]]
) -> list[datetime]:
    """The ``starts`` whose ``[start, start + length)`` meets no range of ``booked``.

    ``booked`` is sorted and its ranges do not overlap (the database sees to that), so their
    ends are sorted too: the one range that can meet a slot is the first that ends after it
    starts.
    """
    ends = [end for _, end in booked]
    free = []
    for start in starts:
        i = bisect.bisect_right(ends, start)
        if i == len(booked) or booked[i][0] >= start + length:
            free.append(start)
    return free


def appointment_info(row: Appointment) -> AppointmentInfo:
    return AppointmentInfo(
        appointment_id=row.id,
        start=from_db(row.slot_start),
        end=from_db(row.slot_end),
        name=row.name,
        phone=row.phone,
        contact_id=row.contact_id,
        listing_id=row.listing_id,
        status="cancelled" if row.status == "cancelled" else "booked",
    )


class Calendar:
    """The calendar of every tenant this process serves."""

    def __init__(
        self,
        db: Database,
        settings: CalendarSettings,
        tenants: TenantRegistry,
        *,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self._db = db
        self._settings = settings
        self._tenants = tenants
        self._now = now
        self._hours: dict[str, tuple[float, Hours]] = {}
        # SQLite has one writer at a time; letting this process's writers queue here instead
        # of in SQLite's busy handler (which sleeps with backoff) cuts the tail latency of
        # concurrent bookings from ~1 s to milliseconds. Other processes still meet SQLite's
        # lock, and the database's rules (``schema``), not this lock, forbid double booking.
        self._write_lock = asyncio.Lock() if db.is_sqlite else None
        self._bookings = BookingWriter(db, self._write_lock)

    async def start(self) -> None:
        """Give the tables their no-overlap rule, then start the booking writer."""
        await ensure_no_overlap(self._db)
        await self._bookings.start()

    async def stop(self) -> None:
        """Stop the booking writer; idempotent."""
        await self._bookings.stop()

    @property
    def bookings(self) -> BookingWriter:
        return self._bookings

    def _session(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self._db.model_session("calendar")

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        if self._write_lock is None:
            async with self._session() as session:
                yield session
            return
        async with self._write_lock, self._session() as session:
            yield session

    # -- hours ------------------------------------------------------------------------------

    def default_hours(self, tenant: str) -> Hours:
        known = self._tenants.get(tenant)
        s = self._settings
        return Hours.build(
            known.time_zone if known else "UTC",
            s.open_time,
            s.close_time,
            s.open_days,
            s.slot_minutes,
        )

    async def hours(self, tenant: str) -> Hours:
        cached = self._hours.get(tenant)
        if cached and clock.monotonic() - cached[0] < HOURS_CACHE_S:
            return cached[1]
        async with self._session() as session:
            row = await session.get(BusinessHours, tenant)
        if row is None:
            hours = self.default_hours(tenant)
        else:
            hours = Hours.build(
                row.time_zone,
                time.fromisoformat(row.open_time),
                time.fromisoformat(row.close_time),
                row.open_days,
                row.slot_minutes,
            )
        self._hours[tenant] = (clock.monotonic(), hours)
        return hours

    async def set_hours(self, tenant: str, hours: Hours) -> Hours:
        described = hours.describe()
        async with self._write() as session:
            row = await session.get(BusinessHours, tenant)
            if row is None:
                row = BusinessHours(
                    tenant=tenant,
                    time_zone=hours.time_zone,
                    open_time="",
                    close_time="",
                    open_days="",
                    slot_minutes=hours.slot_minutes,
                )
            row.time_zone = hours.time_zone
            row.open_time = str(described["open_time"])
            row.close_time = str(described["close_time"])
            row.open_days = ",".join(WEEKDAYS[d] for d in sorted(hours.open_days))
            row.slot_minutes = hours.slot_minutes
            session.add(row)
            await session.commit()
        self._hours[tenant] = (clock.monotonic(), hours)
        return hours

    # -- availability -----------------------------------------------------------------------

    async def availability(self, tenant: str, day: date, days: int) -> AvailabilityResult:
        hours = await self.hours(tenant)
        candidates = [s for d in range(days) for s in hours.slots_on(day + timedelta(days=d))]
        now = self._now()
        candidates = [s for s in candidates if s > now]
        booked: list[tuple[datetime, datetime]] = []
        if candidates:
            # Every booked range that meets the candidates' span, whatever grid it was made on:
            # after a change of hours, a free start can still overlap an older booking.
            async with self._session() as session:
                rows = await session.exec(
                    select(Appointment.slot_start, Appointment.slot_end).where(
                        Appointment.tenant == tenant,
                        Appointment.status == "booked",
                        col(Appointment.slot_start) < to_db(candidates[-1] + hours.slot),
                        col(Appointment.slot_end) > to_db(candidates[0]),
                    )
                )
                booked = sorted((from_db(start), from_db(end)) for start, end in rows.all())
        return AvailabilityResult(
            time_zone=hours.time_zone,
            slot_minutes=hours.slot_minutes,
            slots=[
                Slot(start=s, end=s + hours.slot) for s in _free(candidates, hours.slot, booked)
            ],
        )

    # -- bookings ---------------------------------------------------------------------------

    async def _check_slot(self, tenant: str, start: datetime) -> Hours:
        hours = await self.hours(tenant)
        if start <= self._now():
            raise ToolFailure(ToolErrorCode.INVALID, "that time is in the past")
        if not hours.is_slot(start):
            raise ToolFailure(
                ToolErrorCode.INVALID,
                f"not a bookable slot: {hours.slot_minutes}-minute slots within business hours",
            )
        return hours

    def _reminder_due(self, start: datetime) -> datetime:
        return max(self._now(), start - timedelta(seconds=self._settings.reminder_lead_s))

    async def book(
        self, tenant: str, args: BookArgs, *, call_id: str | None = None
    ) -> AppointmentResult:
        hours = await self._check_slot(tenant, args.start)
        now = to_db(self._now())
        start = to_db(args.start)
        end = to_db(args.start + hours.slot)
        # The ``Appointment`` columns as a plain dict: the writer inserts rows with Core, and
        # building an ORM object per booking only to read it back cost more than the insert.
        row = {
            "id": new_id(),
            "tenant": tenant,
            "slot_start": start,
            "slot_end": end,
            "status": "booked",
            "name": args.name,
            "phone": args.phone,
            "contact_id": args.contact_id,
            "listing_id": args.listing_id,
            "notes": args.notes,
            "idempotency_key": args.idempotency_key,
            "call_id": call_id,
            "created_at": now,
            "updated_at": now,
        }
        reminder = None
        if args.phone:
            reminder = {
                "id": new_id(),
                "tenant": tenant,
                "appointment_id": row["id"],
                "due_at": to_db(self._reminder_due(args.start)),
                "sent_at": None,
                "cancelled": False,
            }
        if await self._bookings.book(row, reminder):
            info = AppointmentInfo(
                appointment_id=row["id"],
                start=start,
                end=end,
                name=args.name,
                phone=args.phone,
                contact_id=args.contact_id,
                listing_id=args.listing_id,
                status="booked",
            )
            return AppointmentResult(appointment=info, created=True)
        # The insert lost: to our own earlier attempt (idempotent retry) or to another caller.
        async with self._session() as session:
            earlier = (
                await session.exec(
                    select(Appointment).where(
                        Appointment.tenant == tenant,
                        Appointment.idempotency_key == args.idempotency_key,
                    )
                )
            ).first()
        if earlier is None:
            raise ToolFailure(ToolErrorCode.SLOT_TAKEN, "that slot is already booked")
        if from_db(earlier.slot_start) != start:
            raise ToolFailure(
                ToolErrorCode.CONFLICT, "this idempotency key was used for another booking"
            )
        return AppointmentResult(appointment=appointment_info(earlier), created=False)

    async def _get(self, session: AsyncSession, tenant: str, appointment_id: str) -> Appointment:
        row = await session.get(Appointment, appointment_id)
        if row is None or row.tenant != tenant:
            raise NotFound(f"no appointment {appointment_id}")
        return row

    async def reschedule(self, tenant: str, args: RescheduleArgs) -> AppointmentResult:
        hours = await self._check_slot(tenant, args.start)
        try:
            async with self._write() as session:
                row = await self._get(session, tenant, args.appointment_id)
                if row.status != "booked":
                    raise ToolFailure(ToolErrorCode.CONFLICT, "the appointment is cancelled")
                row.slot_start = to_db(args.start)
                row.slot_end = to_db(args.start + hours.slot)
                row.updated_at = to_db(self._now())
                session.add(row)
                reminders = await session.exec(
                    select(Reminder).where(Reminder.appointment_id == row.id)
                )
                for reminder in reminders.all():
                    reminder.due_at = to_db(self._reminder_due(args.start))
                    reminder.sent_at = None
                    session.add(reminder)
                await session.commit()
        except IntegrityError as exc:
            raise ToolFailure(ToolErrorCode.SLOT_TAKEN, "that slot is already booked") from exc
        return AppointmentResult(appointment=appointment_info(row))

    async def cancel(self, tenant: str, appointment_id: str) -> AppointmentResult:
        async with self._write() as session:
            row = await self._get(session, tenant, appointment_id)
            if row.status != "cancelled":
                row.status = "cancelled"
                row.updated_at = to_db(self._now())
                session.add(row)
                reminders = await session.exec(
                    select(Reminder).where(Reminder.appointment_id == row.id)
                )
                for reminder in reminders.all():
                    reminder.cancelled = True
                    session.add(reminder)
                await session.commit()
        return AppointmentResult(appointment=appointment_info(row))

    async def list_appointments(
        self, tenant: str, args: ListAppointmentsArgs
    ) -> AppointmentsResult:
        hours = await self.hours(tenant)
        first = args.day or self._now().astimezone(hours.zone).date()
        start = datetime.combine(first, time(0), tzinfo=hours.zone)
        end = start + timedelta(days=args.days)
        query = select(Appointment).where(
            Appointment.tenant == tenant,
            col(Appointment.slot_start) >= to_db(start),
            col(Appointment.slot_start) < to_db(end),
        )
        if args.phone:
            query = query.where(Appointment.phone == args.phone)
        if not args.include_cancelled:
            query = query.where(Appointment.status == "booked")
        async with self._session() as session:
            rows = (await session.exec(query.order_by(col(Appointment.slot_start)))).all()
        return AppointmentsResult(appointments=[appointment_info(r) for r in rows])

    async def count_booked(self, tenant: str) -> int:
        async with self._session() as session:
            result = await session.exec(
                select(func.count())
                .select_from(Appointment)
                .where(Appointment.tenant == tenant, Appointment.status == "booked")
            )
            return int(result.one())

    # -- reminders --------------------------------------------------------------------------

    async def due_reminders(self, limit: int = 100) -> list[tuple[Reminder, Appointment]]:
        now = to_db(self._now())
        async with self._session() as session:
            rows = await session.exec(
                select(Reminder, Appointment)
                .join(Appointment, col(Appointment.id) == col(Reminder.appointment_id))
                .where(
                    col(Reminder.sent_at).is_(None),
                    col(Reminder.cancelled).is_(False),
                    col(Reminder.due_at) <= now,
                    Appointment.status == "booked",
                )
                .order_by(col(Reminder.due_at))
                .limit(limit)
            )
            return [(r, a) for r, a in rows.all()]

    async def mark_sent(self, reminder_id: str) -> None:
        async with self._write() as session:
            reminder = await session.get(Reminder, reminder_id)
            if reminder is not None:
                reminder.sent_at = to_db(self._now())
                session.add(reminder)
                await session.commit()
