"""Fixtures of the transcript tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on a real PostgreSQL (a fresh database each time)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url
