"""Days and times as callers say them ("next Tuesday after lunch", "half four", "the 14th"),
resolved against the tenant's "now".

A bare weekday is the next one after today ("next Tuesday" too), or in the past tense the
latest one before today; a day of the month without a month is this month's, moved a month
on (or back, in the past tense) if needed. A bare hour from 7 to 11 is the morning and 12 to
6 the afternoon, as a receptionist reads it. Where the caller corrects themself, the last
mention wins; a weekday next to a date ("Wednesday the 16th") yields to the date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from voicemesh.agent.normalize import words

__all__ = ["MONTHS", "WEEKDAYS", "When", "read_when"]

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = (
    "january february march april may june july august september october november december"
).split()
_ORDINAL = re.compile(r"^(\d{1,2})(?:st|nd|rd|th)$")
_TIME_CUES = frozenset(
    "at around about like say by till until after before from it maybe or do".split()
)
_MORNING = frozenset({"morning"})
_AFTERNOON = frozenset({"afternoon", "evening", "evenings", "tonight", "pm", "lunch", "work"})


@dataclass(frozen=True)
class When:
    """A day, a local time, or both, as far as the caller said them."""

    day: date | None
    at: time | None

    def iso(self) -> str:
        """``2026-12-15T13:00``, ``2026-12-15`` or ``13:00``."""
        clock = self.at.strftime("%H:%M") if self.at else ""
        if self.day is None:
            return clock
        return f"{self.day.isoformat()}T{clock}" if clock else self.day.isoformat()

    def combine(self, zone: ZoneInfo) -> datetime | None:
        if self.day is None or self.at is None:
            return None
        return datetime.combine(self.day, self.at, tzinfo=zone)


def _roll(candidate: date, today: date, tense: str, *, years: bool) -> date:
    """A day-of-month (or of-year) date moved into the future or the past, as the tense says."""
    if tense == "future" and candidate < today:
        if years:
            return candidate.replace(year=candidate.year + 1)
        month = candidate.month % 12 + 1
        return candidate.replace(year=candidate.year + (month == 1), month=month)
    if tense == "past" and candidate > today:
        if years:
            return candidate.replace(year=candidate.year - 1)
        month = (candidate.month - 2) % 12 + 1
        return candidate.replace(year=candidate.year - (month == 12), month=month)
    return candidate


def _explicit_day(tokens: list[str], index: int, today: date, tense: str) -> date | None:
    """The 14th, December 3rd, the 21st of November."""
    match = _ORDINAL.match(tokens[index])
    if match is None:
        return None
    day_number = int(match.group(1))
    month = today.month
    before = tokens[index - 1] if index else ""
    after = tokens[index + 1 : index + 3]
    named = before in MONTHS or (after[:1] == ["of"] and len(after) == 2 and after[1] in MONTHS)
    if before in MONTHS:
        month = MONTHS.index(before) + 1
    elif named:
        month = MONTHS.index(after[1]) + 1
    try:
        candidate = date(today.year, month, day_number)
    except ValueError:
        return None
    return _roll(candidate, today, tense, years=named)


def _relative_day(tokens: list[str], index: int, today: date, tense: str) -> date | None:
    word = tokens[index]
    before = tokens[index - 1] if index else ""
    after = tokens[index + 1] if index + 1 < len(tokens) else ""
    if word == "tomorrow":
        if before == "after" and index >= 2 and tokens[index - 2] == "day":
            return today + timedelta(days=2)
        if before == "from" and index >= 2 and tokens[index - 2] == "week":
            return today + timedelta(days=8)
        return today + timedelta(days=1)
    if word in ("today", "tonight") or (before == "this" and word in _MORNING | _AFTERNOON):
        return None if before == "from" else today
    if word == "now" and before == "just":
        return today
    if word == "yesterday" or (word == "night" and before == "last"):
        return today - timedelta(days=1)
    if word == "ago" and index >= 2 and before in ("days", "day"):
        count = tokens[index - 2]
        return today - timedelta(days=int(count) if count.isdigit() else 1)
    if word in WEEKDAYS:
        target = WEEKDAYS.index(word)
        if tense == "past" or before in ("last", "past") or after == "past":
            return today - timedelta(days=(today.weekday() - target) % 7 or 7)
        candidate = today + timedelta(days=(target - today.weekday()) % 7 or 7)
        following_monday = today + timedelta(days=7 - today.weekday())
        if "next week" in " ".join(tokens) and candidate < following_monday:
            candidate += timedelta(days=7)
        return candidate
    return None


def _day(tokens: list[str], today: date, tense: str) -> tuple[date, bool] | None:
    """The last day mentioned, and whether it was an explicit date; an explicit date next to
    a weekday ("Wednesday the 16th") wins over the weekday."""
    found: list[tuple[int, date, bool]] = []
    for index in range(len(tokens)):
        explicit = _explicit_day(tokens, index, today, tense)
        if explicit is not None:
            found.append((index, explicit, True))
            continue
        relative = _relative_day(tokens, index, today, tense)
        if relative is not None:
            found.append((index, relative, False))
    if not found:
        return None
    position, day, is_explicit = found[-1]
    for other_position, other_day, other_explicit in found:
        if other_explicit and not is_explicit and abs(other_position - position) <= 3:
            day, is_explicit = other_day, True
    return day, is_explicit


def _part_of_day(tokens: list[str]) -> str | None:
    part = None
    for index, word in enumerate(tokens):
        negated = "not" in tokens[max(0, index - 2) : index]
        if word in _MORNING and not negated:
            part = "am"
        elif word in _AFTERNOON and not negated:
            part = "pm"
    return part


def _single_digit_runs(tokens: list[str]) -> list[int]:
    """For each token, the length of the run of one-digit numbers it is in (0 if none):
    digits said one by one are a phone or policy number, not a time."""
    lengths = [0] * len(tokens)
    start = 0
    while start < len(tokens):
        end = start
        while end < len(tokens) and len(tokens[end]) == 1 and tokens[end].isdigit():
            end += 1
        for index in range(start, end):
            lengths[index] = end - start
        start = max(end, start + 1)
    return lengths


def _time(tokens: list[str]) -> tuple[time, float] | None:
    """The last time of day mentioned, with a confidence."""
    part = _part_of_day(tokens)
    digit_run = _single_digit_runs(tokens)
    candidates: list[tuple[int, int, float]] = []
    for index, word in enumerate(tokens):
        if word in ("noon", "midday"):
            candidates.append((12, 0, 0.9))
            continue
        if not word.isdigit() or len(word) > 2:
            continue
        before = tokens[max(0, index - 2) : index]
        after = tokens[index + 1 : index + 3]
        if "not" in before or digit_run[index] >= 3:
            continue
        minutes = int(after[0]) if after and len(after[0]) == 2 and after[0].isdigit() else None
        if after and after[0].isdigit() and minutes is None:
            continue
        tail = after[1:] if minutes is not None else after
        meridiem = tail[0] if tail and tail[0] in ("am", "pm") else None
        marked = bool(tail) and tail[0] in ("o'clock", "oclock", "ish", "in", "tonight")
        cued = bool(before) and before[-1] in _TIME_CUES
        hour = int(word)
        if minutes is not None and minutes >= 60:
            continue
        if not (meridiem or minutes is not None or marked or cued) or hour > 23:
            continue
        if hour > 12 and (meridiem or minutes is None):
            continue
        meridiem = meridiem or (part if hour <= 12 else None)
        confidence = 0.9 if meridiem or minutes is not None else 0.8
        if meridiem == "pm":
            hour = hour % 12 + 12
        elif meridiem == "am":
            hour %= 12
        elif 1 <= hour <= 6:
            hour += 12
        candidates.append((hour, minutes or 0, confidence))
    if not candidates:
        numbers = [w for w in tokens if w.isdigit()]
        context = part is not None or any(w in WEEKDAYS or w == "tomorrow" for w in tokens)
        if (len(tokens) <= 5 or context) and len(numbers) == 1 and 1 <= int(numbers[0]) <= 12:
            hour = int(numbers[0])
            hour = hour % 12 + 12 if part == "pm" or (part is None and hour <= 6) else hour
            return time(hour % 24, 0), 0.5
        return None
    hour, minute, confidence = candidates[-1]
    return time(hour % 24, minute), confidence


def read_when(
    text: str,
    now: datetime,
    *,
    zone: ZoneInfo | None = None,
    tense: Literal["future", "past"] = "future",
) -> tuple[When, float] | None:
    """The day and time the caller means, relative to ``now`` (read in ``zone`` if given),
    with a confidence from 0 to 1; ``None`` when the line names neither."""
    local_now = now.astimezone(zone) if zone is not None else now
    tokens = words(text)
    day = _day(tokens, local_now.date(), tense)
    clock = _time(tokens)
    if day is None and clock is None:
        return None
    confidence = min(
        0.9 if day is None or day[1] else 0.85,
        1.0 if clock is None else clock[1],
    )
    return When(day[0] if day else None, clock[0] if clock else None), confidence
