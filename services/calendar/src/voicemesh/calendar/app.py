"""The calendar service application: ``create_app(settings)`` wires it, ``__main__`` runs it.

Tools on ``vm.<tenant>.tool.calendar.*`` (availability, book, reschedule, cancel,
list_appointments), appointment events on ``vm.<tenant>.event.appointment``, reminder SMS
jobs, and an authenticated read API under ``/v1/{tenant}/``.
"""

from __future__ import annotations

import logging
from datetime import date, time
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from voicemesh.calendar.reminders import ReminderScheduler
from voicemesh.calendar.settings import CalendarSettings
from voicemesh.calendar.store import Calendar, Hours
from voicemesh.common import MeshService
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import AppointmentChanged, new_event_id
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.contracts.tools import TOOLS
from voicemesh.common.contracts.tools import calendar as contract
from voicemesh.common.runtime.auth import ApiKeys, tenant_guard
from voicemesh.common.runtime.tools import ToolCall, ToolServer

__all__ = ["HoursIn", "create_app"]

log = logging.getLogger(__name__)


class HoursIn(BaseModel):
    """A tenant's business hours, as ``PUT /v1/{tenant}/hours`` takes them."""

    model_config = ConfigDict(extra="forbid")

    time_zone: str = Field(max_length=64)
    open_time: time
    close_time: time
    open_days: list[str] = Field(min_length=1, max_length=7)
    slot_minutes: int = Field(ge=5, le=240)


def create_app(settings: CalendarSettings) -> MeshService:
    service = MeshService(
        "calendar", settings, description="Calendar tools: availability, bookings and reminders."
    )
    calendar = Calendar(service.database(), settings, service.tenants)
    reminders = ReminderScheduler(calendar, service.events, poll_s=settings.reminder_poll_s)
    tools = ToolServer(service, max_workers=settings.tool_workers)

    service.own(calendar)
    service.own(reminders)

    async def announce(
        call: ToolCall,
        result: contract.AppointmentResult,
        change: Literal["booked", "rescheduled", "cancelled"],
        *,
        event_id: str | None = None,
    ) -> None:
        appointment = result.appointment
        event = AppointmentChanged(
            event_id=event_id or new_event_id(),
            tenant=call.tenant.id,
            call_id=call.call_id,
            source="calendar",
            appointment_id=appointment.appointment_id,
            change=change,
            start=appointment.start,
            phone=appointment.phone,
            contact_id=appointment.contact_id,
        )
        try:
            # Not waiting for JetStream's ack here keeps it off the caller's round trip; the
            # event still leaves before the answer does, on the same connection.
            await tools.publish_event(event, subjects.event(call.tenant.id, "appointment"))
        except Exception as exc:
            # The booking is committed; a lost event costs a CRM interaction, not the booking.
            log.warning("could not publish appointment event: %s", type(exc).__name__)

    @tools.tool(TOOLS[("calendar", "availability")])
    async def availability(
        call: ToolCall, args: contract.AvailabilityArgs
    ) -> contract.AvailabilityResult:
        return await calendar.availability(call.tenant.id, args.day, args.days)

    @tools.tool(TOOLS[("calendar", "book")])
    async def book(call: ToolCall, args: contract.BookArgs) -> contract.AppointmentResult:
        result = await calendar.book(call.tenant.id, args, call_id=call.call_id)
        # Announced on an idempotent retry too: a crash may have come between the commit and
        # the event (found by tests/chaos). The id is the booking's own, so JetStream, audit
        # and crm drop the repeat.
        booked_id = derived_id(call.tenant.id, f"booked:{result.appointment.appointment_id}")
        await announce(call, result, "booked", event_id=booked_id)
        return result

    @tools.tool(TOOLS[("calendar", "reschedule")])
    async def reschedule(
        call: ToolCall, args: contract.RescheduleArgs
    ) -> contract.AppointmentResult:
        result = await calendar.reschedule(call.tenant.id, args)
        await announce(call, result, "rescheduled")
        return result

    @tools.tool(TOOLS[("calendar", "cancel")])
    async def cancel(call: ToolCall, args: contract.CancelArgs) -> contract.AppointmentResult:
        result = await calendar.cancel(call.tenant.id, args.appointment_id)
        await announce(call, result, "cancelled")
        return result

    @tools.tool(TOOLS[("calendar", "list_appointments")])
    async def list_appointments(
        call: ToolCall, args: contract.ListAppointmentsArgs
    ) -> contract.AppointmentsResult:
        return await calendar.list_appointments(call.tenant.id, args)

    _http_routes(service, settings, calendar)
    service.provide(calendar)
    service.provide(reminders)
    return service


def _http_routes(service: MeshService, settings: CalendarSettings, calendar: Calendar) -> None:
    guard = tenant_guard(ApiKeys.from_settings(settings), service.tenants)

    @service.http.get("/v1/{tenant}/appointments", tags=["calendar"])
    async def appointments(
        tenant: str = Depends(guard),
        day: date | None = None,
        days: Annotated[int, Query(ge=1, le=62)] = 7,
        include_cancelled: bool = False,
    ) -> contract.AppointmentsResult:
        args = contract.ListAppointmentsArgs(
            day=day, days=days, include_cancelled=include_cancelled
        )
        return await calendar.list_appointments(tenant, args)

    @service.http.get("/v1/{tenant}/availability", tags=["calendar"])
    async def availability(
        day: date,
        tenant: str = Depends(guard),
        days: Annotated[int, Query(ge=1, le=14)] = 1,
    ) -> contract.AvailabilityResult:
        return await calendar.availability(tenant, day, days)

    @service.http.get("/v1/{tenant}/hours", tags=["calendar"])
    async def get_hours(tenant: str = Depends(guard)) -> dict[str, object]:
        return (await calendar.hours(tenant)).describe()

    @service.http.put("/v1/{tenant}/hours", tags=["calendar"])
    async def put_hours(body: HoursIn, tenant: str = Depends(guard)) -> dict[str, object]:
        try:
            hours = Hours.build(
                body.time_zone,
                body.open_time,
                body.close_time,
                ",".join(body.open_days),
                body.slot_minutes,
            )
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return (await calendar.set_hours(tenant, hours)).describe()
