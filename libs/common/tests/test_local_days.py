"""``LocalDays``: what "tomorrow" may mean to a test whose call crossed midnight."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from voicemesh.testkit.fixtures import LocalDays

NEW_YORK = ZoneInfo("America/New_York")


def test_a_test_that_crossed_midnight_accepts_both_tomorrows() -> None:
    days = LocalDays()
    today = datetime.now(NEW_YORK).date()
    assert days.seen(NEW_YORK) == [today]
    assert days.tomorrows(NEW_YORK) == [today + timedelta(days=1)]
    # Began a day ago in New York: two dates seen, each one's tomorrow possible.
    days.began = datetime.now(UTC) - timedelta(days=1)
    assert days.first(NEW_YORK) == today - timedelta(days=1)
    assert days.tomorrows(NEW_YORK) == [today, today + timedelta(days=1)]


def test_the_first_date_is_local_to_the_zone_asked() -> None:
    days = LocalDays()
    days.began = datetime(2026, 11, 25, 4, 30, tzinfo=UTC)  # 23:30 the day before in New York
    assert days.first(NEW_YORK) == date(2026, 11, 24)
    assert days.first(ZoneInfo("Europe/Paris")) == date(2026, 11, 25)
