"""Booking over real NATS on SQLite and PostgreSQL: never a double booking, retries book once."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from nats.aio.client import Client as NatsClient
from sqlalchemy import func, select
from sqlmodel import col

from voicemesh.calendar.models import Appointment, Reminder
from voicemesh.calendar.store import Calendar
from voicemesh.common import SmsJob
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import AppointmentChanged, ToolErrorCode
from voicemesh.common.contracts.tools import AppointmentResult, AvailabilityResult
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.tools import ToolClient
from voicemesh.testkit.fixtures import ProcessTracker, wait_until

from .conftest import API_KEY, BASE_DAY, Running, StartCalendar, book_args, slot


async def hundred_callers_one_slot(cal: Running) -> None:
    start = slot(2, 11)
    results = await asyncio.gather(
        *(
            cal.tools.call(cal.tenant, "calendar", "book", book_args(start, f"caller-{i}"))
            for i in range(100)
        )
    )
    outcome = Counter("ok" if r.ok else (r.error.code.value if r.error else "?") for r in results)
    assert outcome == {"ok": 1, "slot_taken": 99}, outcome
    calendar = cal.service.get(Calendar)
    assert await calendar.count_booked(cal.tenant) == 1

    # One idempotency key sent twice (and concurrently) makes one appointment.
    other = slot(2, 12)
    again = await asyncio.gather(
        *(
            cal.tools.call(cal.tenant, "calendar", "book", book_args(other, "same"))
            for _ in range(5)
        )
    )
    assert all(r.ok for r in again), [r.error for r in again]
    booked = [AppointmentResult.model_validate(r.result) for r in again]
    assert len({b.appointment.appointment_id for b in booked}) == 1
    assert sum(b.created for b in booked) == 1
    assert await calendar.count_booked(cal.tenant) == 2

    # The same key for a different slot is a conflict, not a silent second booking.
    reuse = await cal.tools.call(cal.tenant, "calendar", "book", book_args(slot(2, 13), "same"))
    assert reuse.error is not None and reuse.error.code is ToolErrorCode.CONFLICT


async def two_replicas(start_calendar: StartCalendar, database_url: str) -> Running:
    """Two calendar services on one database: the queue group spreads the calls over both,
    so bookings race across processes' connections, not only within one."""
    first = await start_calendar(database_url)
    await start_calendar(database_url, tenant=first.tenant)
    return first


async def test_no_double_booking_on_sqlite(start_calendar: StartCalendar, sqlite_url: str) -> None:
    await hundred_callers_one_slot(await two_replicas(start_calendar, sqlite_url))


async def test_no_double_booking_on_postgresql(
    start_calendar: StartCalendar, postgres_url: str
) -> None:
    await hundred_callers_one_slot(await two_replicas(start_calendar, postgres_url))


async def test_availability_cancel_reschedule_and_bad_input(
    start_calendar: StartCalendar, sqlite_url: str, nats: NatsClient
) -> None:
    cal = await start_calendar(sqlite_url)
    events = await nats.jetstream().subscribe(
        subjects.event(cal.tenant, "appointment"), stream="EVENTS"
    )
    day = BASE_DAY + timedelta(days=1)
    before = await cal.tools.call(cal.tenant, "calendar", "availability", {"day": day.isoformat()})
    assert before.ok, before.error
    free = AvailabilityResult.model_validate(before.result)
    assert free.slot_minutes == 30 and len(free.slots) == 47

    start = slot(1, 10)
    booked = await cal.tools.call(cal.tenant, "calendar", "book", book_args(start, "a1"))
    assert booked.ok, booked.error
    appointment = AppointmentResult.model_validate(booked.result).appointment
    assert appointment.start == start and appointment.end == start + timedelta(minutes=30)
    changed = AppointmentChanged.model_validate_json((await events.next_msg(timeout=5)).data)
    assert (changed.change, changed.appointment_id) == ("booked", appointment.appointment_id)

    after = await cal.tools.call(cal.tenant, "calendar", "availability", {"day": day.isoformat()})
    slots = AvailabilityResult.model_validate(after.result).slots
    assert start not in {s.start for s in slots} and len(slots) == 46

    # Rescheduling onto a taken slot is refused; onto a free one works.
    blocker = await cal.tools.call(cal.tenant, "calendar", "book", book_args(slot(1, 11), "b1"))
    assert blocker.ok
    clash = await cal.tools.call(
        cal.tenant,
        "calendar",
        "reschedule",
        {"appointment_id": appointment.appointment_id, "start": slot(1, 11).isoformat()},
    )
    assert clash.error is not None and clash.error.code is ToolErrorCode.SLOT_TAKEN
    moved = await cal.tools.call(
        cal.tenant,
        "calendar",
        "reschedule",
        {"appointment_id": appointment.appointment_id, "start": slot(1, 14).isoformat()},
    )
    assert moved.ok and AppointmentResult.model_validate(moved.result).appointment.start == slot(
        1, 14
    )

    # Cancelling frees the slot for someone else.
    cancelled = await cal.tools.call(
        cal.tenant, "calendar", "cancel", {"appointment_id": appointment.appointment_id}
    )
    assert cancelled.ok and cancelled.result is not None
    assert cancelled.result["appointment"]["status"] == "cancelled"
    rebook = await cal.tools.call(cal.tenant, "calendar", "book", book_args(slot(1, 14), "c1"))
    assert rebook.ok, rebook.error

    listed = await cal.tools.call(
        cal.tenant, "calendar", "list_appointments", {"day": day.isoformat(), "days": 1}
    )
    assert listed.ok and listed.result is not None
    assert [a["start"][11:16] for a in listed.result["appointments"]] == [
        slot(1, 11).isoformat()[11:16],
        slot(1, 14).isoformat()[11:16],
    ]

    bad: dict[str, dict[str, object]] = {
        "off the grid": book_args(slot(1, 10, 7), "x1"),
        "in the past": book_args(slot(-1, 10), "x2"),
        "naive time": {**book_args(slot(1, 15), "x3"), "start": "2030-01-01T10:00:00"},
        "no key": {"start": slot(1, 15).isoformat(), "name": "Ada"},
    }
    for label, args in bad.items():
        result = await cal.tools.call(cal.tenant, "calendar", "book", args)
        assert result.error is not None and result.error.code is ToolErrorCode.INVALID, label
    missing = await cal.tools.call(cal.tenant, "calendar", "cancel", {"appointment_id": "nope"})
    assert missing.error is not None and missing.error.code is ToolErrorCode.NOT_FOUND
    await events.unsubscribe()


async def test_business_hours_are_per_tenant(
    start_calendar: StartCalendar, sqlite_url: str
) -> None:
    cal = await start_calendar(sqlite_url)
    transport = httpx.ASGITransport(app=cal.service.http)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://calendar") as http:
        assert (await http.get(f"/v1/{cal.tenant}/hours")).status_code == 401
        wrong = await http.get(f"/v1/{cal.tenant}/hours", headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401  # a key that opens no tenant
        # Another tenant's path, served or not, answers the same: no tenant enumeration.
        assert (await http.get("/v1/nobody/hours", headers=headers)).status_code == 403
        put = await http.put(
            f"/v1/{cal.tenant}/hours",
            headers=headers,
            json={
                "time_zone": "Europe/Paris",
                "open_time": "09:00",
                "close_time": "12:00",
                "open_days": ["mon", "tue", "wed", "thu", "fri"],
                "slot_minutes": 60,
            },
        )
        assert put.status_code == 200, put.text
        bad = await http.put(
            f"/v1/{cal.tenant}/hours",
            headers=headers,
            json={
                "time_zone": "Mars/Olympus",
                "open_time": "09:00",
                "close_time": "12:00",
                "open_days": ["mon"],
                "slot_minutes": 60,
            },
        )
        assert bad.status_code == 422
        monday = date.today() + timedelta(days=7 - date.today().weekday())
        free = await http.get(
            f"/v1/{cal.tenant}/availability", params={"day": monday.isoformat()}, headers=headers
        )
        assert free.status_code == 200
        paris = ZoneInfo("Europe/Paris")
        starts = [
            datetime.fromisoformat(s["start"]).astimezone(paris) for s in free.json()["slots"]
        ]
        assert [s.hour for s in starts] == [9, 10, 11]
        sunday = monday + timedelta(days=6)
        closed = await http.get(
            f"/v1/{cal.tenant}/availability", params={"day": sunday.isoformat()}, headers=headers
        )
        assert closed.json()["slots"] == []
        listed = await http.get(f"/v1/{cal.tenant}/appointments", headers=headers)
        assert listed.status_code == 200 and listed.json() == {"appointments": []}


async def test_api_takes_a_key_that_is_only_in_the_keys_file(
    start_calendar: StartCalendar, sqlite_url: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    tenant, keys_file = unique("t"), tmp_path / "api-keys"
    keys_file.write_text(f"{tenant}:{API_KEY}\n")
    cal = await start_calendar(sqlite_url, tenant, api_keys="", api_keys_file=str(keys_file))
    transport = httpx.ASGITransport(app=cal.service.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://calendar") as http:
        hours = await http.get(
            f"/v1/{tenant}/hours", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert hours.status_code == 200, hours.text
        assert (await http.get(f"/v1/{tenant}/hours")).status_code == 401


async def test_malformed_requests_leave_the_service_serving(
    start_calendar: StartCalendar, sqlite_url: str, nats: NatsClient
) -> None:
    cal = await start_calendar(sqlite_url)
    reply = await nats.request(subjects.tool(cal.tenant, "calendar", "book"), b"\xff", timeout=3)
    assert b'"invalid"' in reply.data
    ok = await cal.tools.call(cal.tenant, "calendar", "book", book_args(slot(4, 9), "after"))
    assert ok.ok, ok.error


async def test_reminders_survive_a_restart(
    nats: NatsClient,
    nats_url: str,
    sqlite_url: str,
    processes: ProcessTracker,
    unique: Callable[[str], str],
) -> None:
    await streams.apply(nats.jetstream(), services=set())
    tenant = unique("t")
    env = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_DATABASE_URL": sqlite_url,
        "VOICEMESH_TENANTS": f"{tenant}:salon",
        "VOICEMESH_OPEN_TIME": "00:00",
        "VOICEMESH_CLOSE_TIME": "23:59",
        "VOICEMESH_OPEN_DAYS": "mon,tue,wed,thu,fri,sat,sun",
        "VOICEMESH_REMINDER_LEAD_S": str(3 * 86400),  # due at once
        "VOICEMESH_REMINDER_POLL_S": "0",  # first run: reminders off
    }
    first = processes.python_module("voicemesh.calendar", env)
    await first.wait_healthy()
    tools = ToolClient(nats, source="test")
    booked = await tools.call(tenant, "calendar", "book", book_args(slot(2, 10), "remind-me"))
    assert booked.ok, booked.error
    appointment = AppointmentResult.model_validate(booked.result).appointment
    first.kill()  # SIGKILL: nothing is flushed on the way down

    jobs = await nats.jetstream().subscribe(subjects.sms_outbound(tenant), stream="SMS")
    second = processes.python_module(
        "voicemesh.calendar", {**env, "VOICEMESH_REMINDER_POLL_S": "0.2"}
    )
    await second.wait_healthy()
    job = SmsJob.model_validate_json((await jobs.next_msg(timeout=10)).data)
    assert job.to == "+15555550100" and job.purpose == "reminder"
    assert job.idempotency_key.startswith(f"reminder-{appointment.appointment_id}-")
    assert "Reply STOP" in job.body

    db_path = sqlite_url.split("///", 1)[1]

    def marked_sent() -> bool:
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            row = conn.execute("SELECT sent_at FROM calendar_reminders").fetchone()
            return row is not None and row[0] is not None

    await wait_until(marked_sent, timeout=10, what="the reminder to be marked sent")
    assert second.terminate() == 0
    info = await nats.jetstream().stream_info("SMS", subjects_filter=subjects.sms_outbound(tenant))
    assert info.state.messages == 1
    await jobs.unsubscribe()


async def mixed_batch(cal: Running, database_url: str) -> None:
    """Bookings committed together still stand or fall one by one, with their reminders."""
    contested, repeated = slot(3, 9), slot(3, 10)
    calls = (
        [book_args(contested, f"rival-{i}") for i in range(10)]
        + [book_args(repeated, "retry") for _ in range(10)]
        + [book_args(slot(3, 11, 30 * (i % 2)) + timedelta(hours=i // 2), f"solo-{i}")
           for i in range(16)]
    )  # fmt: skip
    results = await asyncio.gather(
        *(cal.tools.call(cal.tenant, "calendar", "book", args) for args in calls)
    )
    outcome = [r.error.code.value if r.error else "ok" for r in results]
    assert Counter(outcome[:10]) == {"ok": 1, "slot_taken": 9}, outcome[:10]
    assert outcome[10:] == ["ok"] * 26, outcome[10:]
    retried = [AppointmentResult.model_validate(r.result) for r in results[10:20]]
    assert len({r.appointment.appointment_id for r in retried}) == 1
    assert sum(r.created for r in retried) == 1
    calendar = cal.service.get(Calendar)
    assert await calendar.count_booked(cal.tenant) == 1 + 1 + 16
    assert calendar.bookings.largest_batch > 1  # the calls above did share transactions
    # A reminder row exists for each stored appointment and for nothing else.
    db = Database(database_url)
    try:
        async with db.session() as session:
            reminders = (
                select(func.count())
                .select_from(Reminder)
                .join(Appointment, col(Appointment.id) == col(Reminder.appointment_id))
                .where(col(Reminder.tenant) == cal.tenant)
            )
            assert (await session.execute(reminders)).scalar_one() == 18
            orphans = (
                select(func.count())
                .select_from(Reminder)
                .where(
                    col(Reminder.tenant) == cal.tenant,
                    col(Reminder.appointment_id).not_in(select(col(Appointment.id))),
                )
            )
            assert (await session.execute(orphans)).scalar_one() == 0
    finally:
        await db.close()


async def test_group_commit_keeps_bookings_apart_on_sqlite(
    start_calendar: StartCalendar, sqlite_url: str
) -> None:
    await mixed_batch(await start_calendar(sqlite_url), sqlite_url)


async def test_group_commit_keeps_bookings_apart_on_postgresql(
    start_calendar: StartCalendar, postgres_url: str
) -> None:
    await mixed_batch(await start_calendar(postgres_url), postgres_url)


async def test_a_stopped_calendar_refuses_bookings_as_unavailable(
    start_calendar: StartCalendar, sqlite_url: str
) -> None:
    cal = await start_calendar(sqlite_url)
    calendar = cal.service.get(Calendar)
    await calendar.stop()
    await calendar.stop()  # idempotent
    refused = await cal.tools.call(cal.tenant, "calendar", "book", book_args(slot(5), "late"))
    assert refused.error is not None and refused.error.code is ToolErrorCode.UNAVAILABLE
    await calendar.start()
    booked = await cal.tools.call(cal.tenant, "calendar", "book", book_args(slot(5), "late"))
    assert booked.ok, booked.error
