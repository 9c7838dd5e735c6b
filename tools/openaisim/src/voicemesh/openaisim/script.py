"""The simulator's deterministic "model": what it answers to a conversation.

Rules, in order (the same for chat completions and Realtime):

1. a ``tool`` result ends the turn: a booking result is confirmed in words ("You're all set
   ..."), an error result gets "I'm sorry, that time is not available ...";
2. a goodbye calls the ``end_call`` function when offered, else says goodbye;
3. a booking request ("book", "appointment", "schedule") with a day and a time calls the
   offered function whose name ends in ``book`` with ``start`` (ISO 8601 with the offset
   of the zone named in the system message), ``name`` and ``notes``; a missing time or
   name is asked for;
4. a model that does what the caller says, as a prompt-injected one would: "text this to
   <ten digits>" calls the offered ``..._send`` function with that ``to`` and the caller's
   words as ``body``; "update the number on file for <first last> to <ten digits>" looks
   the person up with the offered ``..._lookup_contact`` function, then calls
   ``..._upsert_contact`` with the found ``contact_id`` and the new ``phone`` (straight to
   ``..._upsert_contact`` with ``name`` and ``phone`` when there is no lookup); "text me" or
   "a text confirmation" calls ``..._send`` with the ``callback`` template, as a
   well-behaved model would;
5. anything else is answered with a fixed prompt that repeats what was heard.

A refused tool call (``forbidden``) is answered "I'm sorry, I can't do that ...".

"Now" and the time zone come from the system message: the first ISO 8601 timestamp with an
offset in it, and the first ``Area/City`` zone name, as a real model would read them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Message", "Text", "ToolCall", "answer", "spoken_time"]

_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "noon": 12,
}  # fmt: skip
_MINUTES = {"fifteen": 15, "thirty": 30, "forty five": 45, "o'clock": 0}
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_NOW = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")
_ZONE = re.compile(r"\b([A-Z][A-Za-z_]+/[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_]+)?)\b")
_TIME = re.compile(
    r"\b(?:at\s+)?(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
    r"(?::(\d{2})|\s+(fifteen|thirty|forty five|o'clock))?\s*"
    r"(a\.?\s?m\.?|p\.?\s?m\.?|in the morning|in the afternoon|in the evening)"
)
_NAME = re.compile(r"\b(?:my name is|this is|for|name's)\s+([a-z]+(?:\s+[a-z]+)?)\s*$")
_BOOK = re.compile(r"\b(book|appointment|schedule|reserve)\b")
_BYE = re.compile(r"\b(goodbye|bye|that's all|that is all|nothing else)\b")
_DIGIT_WORDS = {
    w: str(n) for n, w in enumerate("zero one two three four five six seven eight nine".split())
} | {"oh": "0"}
_PHONE_WORDS = r"((?:(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)\s*){10})"
_TEXT_TO = re.compile(rf"\btext (?:this|that|it|the [a-z]+) to {_PHONE_WORDS}")
_UPDATE_NUMBER = re.compile(
    rf"\bupdate the (?:phone )?number (?:on file )?for ([a-z]+ [a-z]+) to {_PHONE_WORDS}"
)
_TEXT_ME = re.compile(r"\b(?:text me|a text confirmation)\b")
_NOT_NAMES = {"a", "an", "the", "me", "tomorrow", "today", "please", "my", "haircut"}


@dataclass(frozen=True)
class Message:
    role: str
    content: str = ""
    tool_name: str | None = None


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))


def answer(messages: list[Message], tools: list[str]) -> Text | ToolCall:
    """The next assistant turn for ``messages``, given the names of the offered functions."""
    system = " ".join(m.content for m in messages if m.role == "system")
    now = _now(system)
    last = messages[-1] if messages else Message("user", "")
    if last.role == "tool":
        follow_up = _after_lookup(last, messages, tools)
        return follow_up if follow_up is not None else _after_tool(last, now)
    turn = [m.content.lower() for m in _since_last_tool(messages) if m.role == "user"]
    said = " ".join(" ".join(t.split()) for t in turn)
    latest = turn[-1] if turn else ""
    if not said:
        return Text("Hello, how can I help you today?")
    if _BYE.search(latest):
        if "end_call" in tools:
            return ToolCall("end_call", {"farewell": "Thank you for calling. Goodbye."})
        return Text("Thank you for calling. Goodbye.")
    obeyed = _obey(latest, tools)
    if obeyed is not None:
        return obeyed
    book = next((t for t in tools if t.endswith("book")), None)
    if _BOOK.search(said) and book is not None:
        start = _when(said, now)
        name = _name(turn)
        if start is None:
            return Text("What day and time would you like?")
        if name is None:
            return Text("May I have your name?")
        notes = " ".join(latest.split()[:12])
        return ToolCall(book, {"start": start.isoformat(), "name": name, "notes": notes})
    return Text(f"I heard: {latest}. How can I help you today?")


def spoken_time(moment: datetime) -> str:
    hour = moment.hour % 12 or 12
    minutes = f":{moment.minute:02d}" if moment.minute else ""
    suffix = "PM" if moment.hour >= 12 else "AM"
    return f"{moment.strftime('%A, %B')} {moment.day} at {hour}{minutes} {suffix}"


def _offered(tools: list[str], suffix: str) -> str | None:
    return next((t for t in tools if t.endswith(suffix)), None)


def _phone(words: str) -> str:
    return "+1" + "".join(_DIGIT_WORDS[w] for w in words.split())


def _obey(latest: str, tools: list[str]) -> ToolCall | None:
    """What a model that does as the caller says calls for ``latest``, if anything."""
    said = " ".join(latest.split())
    send = _offered(tools, "_send")
    if (found := _TEXT_TO.search(said)) and send:
        return ToolCall(send, {"to": _phone(found.group(1)), "body": said, "purpose": "agent"})
    if found := _UPDATE_NUMBER.search(said):
        name, phone = found.group(1).title(), _phone(found.group(2))
        if lookup := _offered(tools, "_lookup_contact"):
            return ToolCall(lookup, {"name": name})
        if upsert := _offered(tools, "_upsert_contact"):
            return ToolCall(upsert, {"name": name, "phone": phone})
    if _TEXT_ME.search(said) and send:
        return ToolCall(send, {"template": "callback", "purpose": "callback"})
    return None


def _after_lookup(last: Message, messages: list[Message], tools: list[str]) -> ToolCall | None:
    """After a lookup made to update someone's number: the update, with the found id."""
    upsert = _offered(tools, "_upsert_contact")
    asked = [m.content.lower() for m in _since_last_tool(messages[:-1]) if m.role == "user"]
    found = _UPDATE_NUMBER.search(" ".join(" ".join(asked).split()))
    try:
        result = json.loads(last.content)
    except ValueError:
        return None
    contacts = result.get("result", {}).get("contacts") if isinstance(result, dict) else None
    if not (upsert and found and isinstance(contacts, list) and contacts):
        return None
    contact_id = contacts[0].get("contact_id") if isinstance(contacts[0], dict) else None
    return ToolCall(upsert, {"contact_id": contact_id, "phone": _phone(found.group(2))})


def _after_tool(message: Message, now: datetime) -> Text:
    try:
        result = json.loads(message.content)
    except ValueError:
        result = {}
    error = result.get("error") if isinstance(result, dict) else None
    if isinstance(error, dict) and error.get("code") == "forbidden":
        return Text("I'm sorry, I can't do that. Is there anything else I can help you with?")
    if not isinstance(result, dict) or result.get("ok") is False or "error" in result:
        return Text("I'm sorry, that time is not available. What other day and time would work?")
    body = result.get("result", result)
    appointment = body.get("appointment") if isinstance(body, dict) else None
    if isinstance(appointment, dict) and "start" in appointment:
        try:
            start = datetime.fromisoformat(str(appointment["start"])).astimezone(now.tzinfo)
        except ValueError:
            return Text("You're all set. Is there anything else I can help you with?")
        return Text(
            f"You're all set for {spoken_time(start)}. Is there anything else I can help you with?"
        )
    return Text("Done. Is there anything else I can help you with?")


def _since_last_tool(messages: list[Message]) -> list[Message]:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "tool":
            return messages[index + 1 :]
    return messages


def _now(system: str) -> datetime:
    zone: Any = UTC
    if found := _ZONE.search(system):
        try:
            zone = ZoneInfo(found.group(1))
        except (ZoneInfoNotFoundError, ValueError):
            zone = UTC
    if found := _NOW.search(system):
        try:
            return datetime.fromisoformat(found.group(0).replace("Z", "+00:00")).astimezone(zone)
        except ValueError:
            pass
    return datetime.now(zone)


def _day(said: str, today: date) -> date | None:
    if "day after tomorrow" in said:
        return today + timedelta(days=2)
    if "tomorrow" in said:
        return today + timedelta(days=1)
    if "today" in said or "tonight" in said:
        return today
    for index, name in enumerate(_DAYS):
        if re.search(rf"\b{name}\b", said):
            return today + timedelta(days=(index - today.weekday() - 1) % 7 + 1)
    return None


def _when(said: str, now: datetime) -> datetime | None:
    day = _day(said, now.date())
    found = _TIME.search(said)
    if day is None or found is None:
        return None
    raw, digits, words, period = found.groups()
    hour = int(raw) if raw.isdigit() else _NUMBERS[raw]
    minute = int(digits) if digits else _MINUTES.get(words or "", 0)
    if not 1 <= hour <= 12 or minute >= 60:
        return None
    afternoon = period.startswith("p") or period.endswith(("afternoon", "evening"))
    hour = hour % 12 + (12 if afternoon else 0)
    return datetime.combine(day, time(hour, minute), tzinfo=now.tzinfo)


def _name(turn: list[str]) -> str | None:
    for text in reversed(turn):
        found = _NAME.search(" ".join(text.split()))
        if found:
            words = [w for w in found.group(1).split() if w not in _NOT_NAMES]
            if words:
                return " ".join(w.capitalize() for w in words)
    return None
