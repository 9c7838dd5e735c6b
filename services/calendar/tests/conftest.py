"""Fixtures of the calendar tests: in-process calendars on real NATS, either database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.calendar import CalendarSettings, create_app
from voicemesh.common import MeshService
from voicemesh.common.contracts import streams
from voicemesh.common.runtime.tools import ToolClient

API_KEY = "calendar-test-key-0123456789"


@dataclass
class Running:
    service: MeshService
    tenant: str
    tools: ToolClient
    settings: CalendarSettings


StartCalendar = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_calendar(
    nats: NatsClient, nats_url: str, unique: Callable[[str], str]
) -> AsyncIterator[StartCalendar]:
    """Start an in-process calendar on the test's NATS; stopped at the end of the test."""
    await streams.apply(nats.jetstream(), services=set())
    started: list[MeshService] = []

    async def start(database_url: str, tenant: str | None = None, **overrides: object) -> Running:
        tenant = tenant or unique("t")
        fields: dict[str, object] = {
            "nats_urls": [nats_url],
            "database_url": database_url,
            "tenants": f"{tenant}:salon",
            "api_keys": f"{tenant}:{API_KEY}",
            "open_time": "00:00",
            "close_time": "23:59",
            "open_days": "mon,tue,wed,thu,fri,sat,sun",
            "slot_minutes": 30,
            "reminder_poll_s": 0,
            "tool_workers": 64,
            **overrides,
        }
        settings = CalendarSettings.model_validate(fields)
        service = create_app(settings)
        await service.start()
        started.append(service)
        return Running(service, tenant, ToolClient(nats, source="test"), settings)

    yield start
    for service in reversed(started):
        await service.stop()


ZONE = ZoneInfo("America/New_York")


# The days these tests book are fixed when the module loads, half a day on: a run that crosses
# midnight in New York still books the same (future) days it started with.
BASE_DAY = (datetime.now(ZONE) + timedelta(hours=12)).date()


def slot(days_ahead: int = 1, hour: int = 10, minute: int = 0) -> datetime:
    day = BASE_DAY + timedelta(days=days_ahead)
    return datetime.combine(day, time(hour, minute), tzinfo=ZONE).astimezone(UTC)


def book_args(start: datetime, key: str, phone: str | None = "+15555550100") -> dict[str, object]:
    return {"start": start.isoformat(), "name": "Ada", "phone": phone, "idempotency_key": key}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on a real PostgreSQL (a fresh database each time)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url
