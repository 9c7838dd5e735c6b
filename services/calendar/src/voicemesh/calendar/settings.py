"""Settings of the calendar service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from datetime import time

from pydantic import Field, field_validator

from voicemesh.common import ServiceSettings
from voicemesh.common.runtime.auth import ApiKeySettings

__all__ = ["WEEKDAYS", "CalendarSettings"]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class CalendarSettings(ServiceSettings, ApiKeySettings):
    """Defaults for every tenant's business hours; a tenant can override them over HTTP.

    The defaults (08:00-20:00, every day) keep the demo bookable whatever day it runs.
    """

    service_name: str = "calendar"
    http_port: int = 8084

    open_time: time = time(8, 0)
    close_time: time = time(20, 0)
    open_days: str = "mon,tue,wed,thu,fri,sat,sun"
    slot_minutes: int = Field(default=30, ge=5, le=240)

    reminder_lead_s: float = Field(default=86400.0, ge=0, description="reminder before start")
    reminder_poll_s: float = Field(default=5.0, ge=0, description="0 turns reminders off")
    tool_workers: int = Field(default=32, ge=1, le=256)

    @field_validator("open_days")
    @classmethod
    def _check_days(cls, value: str) -> str:
        days = [d.strip().lower() for d in value.split(",") if d.strip()]
        unknown = [d for d in days if d not in WEEKDAYS]
        if unknown or not days:
            raise ValueError(f"open_days must be a list of {','.join(WEEKDAYS)}")
        return ",".join(days)
