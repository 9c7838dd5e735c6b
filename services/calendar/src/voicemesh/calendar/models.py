"""The calendar's tables. Times are aware datetimes, stored and read back as UTC (SQLModel).

Double-booking is made impossible by the database, not by a check: a unique index on
``(tenant, slot_start)`` that covers only booked rows (a partial index on both SQLite and
PostgreSQL), so a cancelled appointment frees its slot and two concurrent inserts for one
slot cannot both commit. Slots that start apart can still overlap once the hours or the
slot length change; ``schema`` adds the rule against that (an exclusion constraint on
PostgreSQL, triggers on SQLite) at startup, which ``create_all`` cannot do for old tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from voicemesh.common.contracts.ids import new_id

__all__ = ["Appointment", "BusinessHours", "Reminder", "new_id"]


class Appointment(SQLModel, table=True):
    __tablename__ = "calendar_appointments"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_calendar_idempotency"),
        Index(
            "uq_calendar_booked_slot",
            "tenant",
            "slot_start",
            unique=True,
            sqlite_where=text("status = 'booked'"),
            postgresql_where=text("status = 'booked'"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=63)
    slot_start: datetime
    slot_end: datetime
    status: str = Field(default="booked", max_length=16)
    name: str = Field(max_length=128)
    phone: str | None = Field(default=None, max_length=16)
    contact_id: str | None = Field(default=None, max_length=64)
    listing_id: str | None = Field(default=None, max_length=64)
    notes: str = Field(default="", max_length=1000)
    idempotency_key: str = Field(max_length=128)
    call_id: str | None = Field(default=None, max_length=64)
    created_at: datetime
    updated_at: datetime


class Reminder(SQLModel, table=True):
    """A reminder text to send at ``due_at``; kept until sent so a restart loses none."""

    __tablename__ = "calendar_reminders"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(max_length=63)
    appointment_id: str = Field(index=True, max_length=32)
    due_at: datetime = Field(index=True)
    sent_at: datetime | None = None
    cancelled: bool = False


class BusinessHours(SQLModel, table=True):
    """A tenant's own hours; tenants without a row use the service's defaults."""

    __tablename__ = "calendar_business_hours"

    tenant: str = Field(primary_key=True, max_length=63)
    time_zone: str = Field(max_length=64)
    open_time: str = Field(max_length=5)
    close_time: str = Field(max_length=5)
    open_days: str = Field(max_length=40)
    slot_minutes: int
