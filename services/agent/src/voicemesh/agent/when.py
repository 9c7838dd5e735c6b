"""Spoken dates and times ("tomorrow at three pm") resolved in the tenant's time zone.

The recogniser returns words, never digits, so this parser works on words. A missing
part of the day (am/pm) is read the way a receptionist would: 7 to 11 is morning, 12 to 6
is afternoon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["Resolved", "format_spoken", "parse_digits", "resolve_when"]

_UNITS = {
    "zero": 0,
    "oh": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
}
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "thirteenth": 13,
    "fourteenth": 14,
    "fifteenth": 15,
    "sixteenth": 16,
    "seventeenth": 17,
    "eighteenth": 18,
    "nineteenth": 19,
    "twentieth": 20,
    "thirtieth": 30,
}
_MINUTES = {"fifteen": 15, "thirty": 30, "forty five": 45, "o'clock": 0}


@dataclass(frozen=True)
class Resolved:
    """What the caller said, as far as it goes: a day, a time, or both."""

    day: date | None
    at: time | None

    @property
    def complete(self) -> bool:
        return self.day is not None and self.at is not None

    def combine(self, zone: ZoneInfo) -> datetime:
        assert self.day is not None and self.at is not None
        return datetime.combine(self.day, self.at, tzinfo=zone)


def _day(text: str, today: date, tense: str) -> date | None:
    if "day after tomorrow" in text:
        return today + timedelta(days=2)
    if re.search(r"\btomorrow\b", text):
        return today + timedelta(days=1)
    if re.search(r"\byesterday\b", text):
        return today - timedelta(days=1)
    if re.search(r"\btoday\b|\btonight\b", text):
        return today
    month = re.search(r"\b(" + "|".join(_MONTHS) + r")\b((?:\s+\w+){1,2})", text)
    if month:
        day_words = month.group(2).split()
        day_number = 0
        if day_words and day_words[0] in ("twenty", "thirty"):
            day_number = 20 if day_words[0] == "twenty" else 30
            if len(day_words) > 1 and day_words[1] in _ORDINALS:
                day_number += _ORDINALS[day_words[1]]
        elif day_words and day_words[0] in _ORDINALS:
            day_number = _ORDINALS[day_words[0]]
        if day_number:
            month_number = _MONTHS.index(month.group(1)) + 1
            try:
                candidate = date(today.year, month_number, day_number)
            except ValueError:
                return None
            if tense == "future" and candidate < today:
                candidate = candidate.replace(year=today.year + 1)
            if tense == "past" and candidate > today:
                candidate = candidate.replace(year=today.year - 1)
            return candidate
    weekday = re.search(r"\b(next\s+|last\s+)?(" + "|".join(_WEEKDAYS) + r")\b", text)
    if weekday:
        target = _WEEKDAYS.index(weekday.group(2))
        if tense == "past" or (weekday.group(1) or "").strip() == "last":
            delta = (today.weekday() - target) % 7 or 7
            return today - timedelta(days=delta)
        delta = (target - today.weekday()) % 7 or 7
        return today + timedelta(days=delta)
    return None


def _time(text: str) -> time | None:
    if re.search(r"\b(noon|midday)\b", text):
        return time(12, 0)
    match = re.search(
        r"\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b"
        r"(?:\s+(fifteen|thirty|forty five|o'clock))?"
        r"(?:\s+(a m|p m|in the morning|in the afternoon|in the evening))?",
        text,
    )
    if not match:
        return None
    # A bare number counts as a time only after "at" or with a part of the day.
    before = text[: match.start()].split()
    if not match.group(3) and not match.group(2) and (not before or before[-1] != "at"):
        return None
    hour = _UNITS[match.group(1)]
    minute = _MINUTES.get(match.group(2) or "o'clock", 0)
    meridiem = match.group(3) or ""
    if meridiem in ("p m", "in the afternoon", "in the evening"):
        hour = hour % 12 + 12
    elif meridiem in ("a m", "in the morning"):
        hour = hour % 12
    elif hour == 12 or hour <= 6:
        hour = hour % 12 + 12
    return time(hour, minute)


def resolve_when(text: str, now: datetime, *, tense: str = "future") -> Resolved:
    """Resolve spoken words against ``now`` (an aware datetime in the tenant's zone)."""
    words = " ".join(text.lower().split())
    return Resolved(day=_day(words, now.date(), tense), at=_time(words))


def format_spoken(when: datetime, now: datetime) -> str:
    """How the agent says a moment back: "tomorrow, Wednesday November 25 at 3 PM"."""
    hour = when.strftime("%I").lstrip("0")
    minute = "" if when.minute == 0 else f":{when.minute:02d}"
    clock = f"{hour}{minute} {when.strftime('%p')}"
    day = f"{when.strftime('%A %B')} {when.day}"
    delta = (when.date() - now.date()).days
    prefix = {0: "today, ", 1: "tomorrow, ", -1: "yesterday, "}.get(delta, "")
    return f"{prefix}{day} at {clock}"


def parse_digits(text: str) -> str:
    """Spoken digits ("five five five oh one") as a digit string ("55501")."""
    out = []
    for word in text.lower().split():
        value = _UNITS.get(word)
        if value is not None and value < 10:
            out.append(str(value))
    return "".join(out)
