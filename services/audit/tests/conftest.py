"""Fixtures of the audit tests: one database per backend, and events to record."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from voicemesh.audit.chain import ChainEntry, canonical_json

_ids = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on a real PostgreSQL (a fresh database each time)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def make_entry() -> Callable[..., ChainEntry]:
    def make(
        tenant: str, call_id: str | None = "call-1", event_type: str = "call.ringing"
    ) -> ChainEntry:
        n = next(_ids)
        payload = {"event_id": f"e{n}", "tenant": tenant, "type": event_type, "n": n}
        return ChainEntry(
            tenant=tenant,
            event_id=f"e{n}",
            event_type=event_type,
            call_id=call_id,
            source="test",
            subject=f"subject-{n}",
            occurred_at=f"2030-01-01T00:00:{n % 60:02d}.000000Z",
            payload=canonical_json(payload),
        )

    return make
