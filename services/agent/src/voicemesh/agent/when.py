"""Spoken dates and times ("tomorrow at three pm") resolved in the tenant's time zone.

Reading is ``spoken_time``'s (any recogniser's words or digits, relative days, "half
four", corrections); this module keeps the dialog's view of it, ``Resolved``, and how the
agent says a moment back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Literal
from zoneinfo import ZoneInfo

from voicemesh.agent.normalize import words
from voicemesh.agent.spoken_time import read_when

__all__ = ["Resolved", "format_spoken", "parse_digits", "resolve_when"]

#: ``spoken_time``'s confidence in an hour read from a lone number
GUESSED = 0.5


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


def resolve_when(
    text: str, now: datetime, *, tense: Literal["future", "past"] = "future", asked: bool = False
) -> Resolved:
    """Resolve spoken words against ``now`` (an aware datetime in the tenant's zone).

    A lone number is a time only when the caller was asked for one (``asked``): "I have
    three kids" names no hour."""
    found = read_when(text, now, tense=tense)
    if found is None:
        return Resolved(None, None)
    when, confidence = found
    if when.day is None and confidence <= GUESSED and not asked:
        return Resolved(None, None)
    return Resolved(when.day, when.at)


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
    """Every digit said ("five five five oh one", "555-01", "double five") as one string."""
    return "".join(word for word in words(text) if word.isdigit())
