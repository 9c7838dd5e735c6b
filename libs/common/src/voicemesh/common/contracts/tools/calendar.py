"""The calendar service's tools: availability, bookings, reschedules, cancellations."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import AwareDatetime, Field

from voicemesh.common.contracts.tools.base import (
    Id,
    IdempotencyKey,
    Name,
    Phone,
    ToolArgs,
    ToolOutput,
)

__all__ = [
    "AppointmentInfo",
    "AppointmentResult",
    "AppointmentsResult",
    "AvailabilityArgs",
    "AvailabilityResult",
    "BookArgs",
    "CancelArgs",
    "ListAppointmentsArgs",
    "RescheduleArgs",
    "Slot",
]


class AvailabilityArgs(ToolArgs):
    day: date
    days: int = Field(default=1, ge=1, le=14)


class Slot(ToolOutput):
    start: datetime
    end: datetime


class AvailabilityResult(ToolOutput):
    time_zone: str
    slot_minutes: int
    slots: list[Slot]


class BookArgs(ToolArgs):
    start: AwareDatetime
    name: Name
    phone: Phone | None = None
    contact_id: Id | None = None
    listing_id: Id | None = None
    notes: str = Field(default="", max_length=1000)
    idempotency_key: IdempotencyKey


class AppointmentInfo(ToolOutput):
    appointment_id: str
    start: datetime
    end: datetime
    name: str
    phone: str | None = None
    contact_id: str | None = None
    listing_id: str | None = None
    status: Literal["booked", "cancelled"]


class AppointmentResult(ToolOutput):
    appointment: AppointmentInfo
    created: bool = False


class RescheduleArgs(ToolArgs):
    appointment_id: Id
    start: AwareDatetime


class CancelArgs(ToolArgs):
    appointment_id: Id


class ListAppointmentsArgs(ToolArgs):
    day: date | None = None
    days: int = Field(default=7, ge=1, le=62)
    phone: Phone | None = None
    include_cancelled: bool = False


class AppointmentsResult(ToolOutput):
    appointments: list[AppointmentInfo]
