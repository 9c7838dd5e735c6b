"""Spoken dates and times resolved in the tenant's time zone."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest

from voicemesh.agent.when import format_spoken, parse_digits, resolve_when

NEW_YORK = ZoneInfo("America/New_York")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=NEW_YORK)  # a Tuesday


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("tomorrow at three p m", datetime(2026, 11, 25, 15, 0)),
        ("today at four", datetime(2026, 11, 24, 16, 0)),
        ("monday at ten thirty a m", datetime(2026, 11, 30, 10, 30)),
        ("next tuesday at noon", datetime(2026, 12, 1, 12, 0)),
        ("december third at nine in the morning", datetime(2026, 12, 3, 9, 0)),
        ("january twenty first at two p m", datetime(2027, 1, 21, 14, 0)),
        ("the day after tomorrow at eleven", datetime(2026, 11, 26, 11, 0)),
    ],
)
def test_future_moments(words: str, expected: datetime) -> None:
    resolved = resolve_when(words, NOW)
    assert resolved.complete
    assert resolved.combine(NEW_YORK) == expected.replace(tzinfo=NEW_YORK)


def test_the_same_words_mean_the_tenants_local_time() -> None:
    now = NOW.astimezone(LOS_ANGELES)  # 07:00 in Los Angeles, same instant
    moment = resolve_when("tomorrow at three p m", now).combine(LOS_ANGELES)
    assert moment.isoformat() == "2026-11-25T15:00:00-08:00"


def test_past_tense_and_partial_answers() -> None:
    assert resolve_when("yesterday", NOW, tense="past").day == NOW.date().replace(day=23)
    assert resolve_when("last friday", NOW, tense="past").day == NOW.date().replace(day=20)
    only_day = resolve_when("on thursday", NOW)
    assert only_day.day is not None and only_day.at is None and not only_day.complete
    assert resolve_when("at three", NOW).at == time(15, 0)
    # A number that is not after "at" and has no part of the day is not a time.
    assert resolve_when("i have three kids", NOW).at is None


def test_spoken_forms() -> None:
    assert format_spoken(datetime(2026, 11, 25, 15, 0, tzinfo=NEW_YORK), NOW) == (
        "tomorrow, Wednesday November 25 at 3 PM"
    )
    assert format_spoken(datetime(2026, 11, 30, 10, 30, tzinfo=NEW_YORK), NOW) == (
        "Monday November 30 at 10:30 AM"
    )
    assert parse_digits("five five five oh one two") == "555012"
