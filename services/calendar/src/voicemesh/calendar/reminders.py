"""Reminder texts: a poller that turns due reminder rows into SMS jobs.

Reminders are rows, so a restart loses none: whatever was due while the service was down is
sent on the next poll. A reminder is marked sent only after its job is stored in JetStream;
a crash in between re-publishes the same job, whose idempotency key (and JetStream message
id) makes the sms service send it once.
"""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo

from voicemesh.calendar.models import Appointment, Reminder
from voicemesh.calendar.store import Calendar, from_db
from voicemesh.common import JetStreamPublisher, SmsJob
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.runtime.tasks import PeriodicTask

__all__ = ["ReminderScheduler", "reminder_key"]

log = logging.getLogger(__name__)


def reminder_key(appointment: Appointment) -> str:
    return f"reminder-{appointment.id}-{from_db(appointment.slot_start):%Y%m%dT%H%M}"


class ReminderScheduler:
    """Owns the polling task: ``start()`` launches it, ``stop()`` cancels and awaits it."""

    def __init__(self, calendar: Calendar, events: JetStreamPublisher, *, poll_s: float) -> None:
        self._calendar = calendar
        self._events = events
        self._poll_s = poll_s
        # A round that fails (database or NATS outage) keeps its rows for the next one.
        self._task = PeriodicTask(self.send_due, interval_s=poll_s, name="calendar-reminders")
        self.sent = 0

    async def start(self) -> None:
        if self._poll_s > 0:
            self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def send_due(self) -> int:
        """Publish every due reminder; returns how many were sent."""
        count = 0
        for reminder, appointment in await self._calendar.due_reminders():
            await self._publish(reminder, appointment)
            await self._calendar.mark_sent(reminder.id)
            count += 1
        self.sent += count
        return count

    async def _publish(self, reminder: Reminder, appointment: Appointment) -> None:
        if not appointment.phone:
            return
        hours = await self._calendar.hours(appointment.tenant)
        local = from_db(appointment.slot_start).astimezone(ZoneInfo(hours.time_zone))
        key = reminder_key(appointment)
        job = SmsJob(
            event_id=derived_id(appointment.tenant, key),
            tenant=appointment.tenant,
            call_id=appointment.call_id,
            source="calendar",
            idempotency_key=key,
            to=appointment.phone,
            body=(
                f"Reminder: your appointment is on {local:%a %b %d at %H:%M} ({hours.time_zone}). "
                "Reply STOP to opt out."
            ),
            purpose="reminder",
        )
        await self._events.publish(job, subjects.sms_outbound(appointment.tenant))
