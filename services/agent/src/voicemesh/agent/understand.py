"""What one caller line tells the offline dialog, read from free speech.

The line is read as ``normalize`` writes it (numbers as digits, "p.m." as ``pm``), by any
recogniser; slot values come from the ``slots`` extractors (names never seen, numbers said
in pairs or with "double", fuzzy choices with the profile's synonyms). A value the agent
did not ask for is taken only when the line clearly states it ("my name is ...", "my
number is ...", a choice said exactly).
"""

from __future__ import annotations

import re
from typing import Any

from voicemesh.agent.normalize import fold, words
from voicemesh.agent.profiles import Profile, SlotSpec, spoken_forms
from voicemesh.agent.slots import (
    extract_address,
    extract_choice,
    extract_name,
    extract_phone,
    extract_policy,
    extract_yes_no,
)
from voicemesh.agent.spoken_time import MONTHS, WEEKDAYS

__all__ = ["asks_for_person", "detect_intent", "heard", "read_slot", "says_goodbye", "yes_no"]

_BYE = re.compile(r"\b(goodbye|bye|that's all|that's it|nothing else|no thanks|no thank you)\b")
_NAME_CUE = re.compile(r"\b(my name is|my name's|name is|name's|this is|it's|i am|i'm|under)\b")
_NUMBER_CUE = re.compile(r"\b(number is|number's|it's|policy|number)\b")
_PERSON = re.compile(
    r"\b(?:talk|speak|speaking|talking) (?:to|with) (?:a |an |the |your |my )?"
    r"(?:real |actual |live )?"
    r"(?:person|someone|somebody|human|agent|manager|representative|receptionist|staff|nurse)\b"
    r"|\b(?:real|live|actual) (?:person|agent|human)\b|\boperator\b|\bput me through\b"
    r"|\b(?:transfer|connect) me\b|\b(?:somebody|someone|a person) (?:to )?call me\b"
    r"|\bhave (?:somebody|someone|a person|her|him) (?:call|ring)\b"
)
#: what a confident choice the agent asked for scores (``slots.extract_choice``)
CHOICE_CONFIDENCE = 0.7
#: what a name the agent did not ask for must score: said after a cue
NAME_CONFIDENCE = 0.6
_NOT_NAMES = frozenset(
    "yes yeah no nope okay sure sorry what um uh hello hi thanks please the a and".split()
)


def heard(text: str) -> str:
    """The line as one lowercase string, numbers as digits."""
    return " ".join(words(text))


def says_goodbye(text: str) -> bool:
    return bool(_BYE.search(fold(text)))


def asks_for_person(text: str) -> bool:
    return bool(_PERSON.search(fold(text)))


def yes_no(text: str) -> bool | None:
    found = extract_yes_no(text)
    return None if found is None else found.value


def detect_intent(profile: Profile, text: str) -> str | None:
    """The intent whose keywords the line says most often."""
    spoken = f"{fold(text)} | {heard(text)}"
    best: tuple[int, str] | None = None
    for name, intent in profile.intents.items():
        hits = sum(1 for k in intent.keywords if re.search(rf"\b{re.escape(k)}\b", spoken))
        if hits and (best is None or hits > best[0]):
            best = (hits, name)
    if best is not None:
        return best[1]
    # No keyword: the intent whose choices the line names ("an eyebrow wax, please").
    named = {
        name
        for name, intent in profile.intents.items()
        for slot in intent.slots
        if profile.slots[slot].type == "choice"
        and read_slot(profile.slots[slot], text, asked=True) is not None
    }
    return named.pop() if len(named) == 1 else None


def _exact_choice(spec: SlotSpec, spoken: str) -> str | None:
    best: tuple[int, str] | None = None
    for value, synonyms in spec.choices.items():
        for phrase in spoken_forms(value, synonyms):
            if re.search(rf"\b{re.escape(phrase)}\b", spoken) and (
                best is None or len(phrase) > best[0]
            ):
                best = (len(phrase), value)
    return best[1] if best else None


_WHEN_WORDS = frozenset(
    [*WEEKDAYS, *MONTHS, "today", "tomorrow", "tonight", "morning", "afternoon", "evening"]
)


def _says_when(text: str) -> bool:
    return any(w.isdigit() or w in _WHEN_WORDS or w in ("am", "pm") for w in words(text))


def _name(spec: SlotSpec, text: str, *, asked: bool) -> str | None:
    found = extract_name(text)
    street = extract_address(text)
    if found is not None and street is not None and found.value in street.value:
        return None  # "64 Pennington Close" names a street, not a person
    if found is not None and (asked or found.confidence >= NAME_CONFIDENCE):
        return found.value
    spoken = fold(text)
    cued = _NAME_CUE.search(spoken)
    if not (asked or cued):
        return None
    tail = _NAME_CUE.split(spoken)[-1] if cued else spoken
    known = set(spec.names)
    parts = [w for w in tail.split() if w in known][:2]
    if not parts and asked and yes_no(text) is None and not _says_when(text):
        # A lowercase transcript of a short answer: the name alone ("marisol quenby").
        parts = [w for w in tail.split() if w not in _NOT_NAMES][:3]
        if not parts or len(tail.split()) > 3:
            return None
    return " ".join(p.capitalize() for p in parts) if parts else None


def read_slot(spec: SlotSpec, text: str, *, asked: bool) -> Any:
    """The value ``text`` gives a choice, name, address or digits slot, or ``None``."""
    if spec.type == "choice":
        exact = _exact_choice(spec, f"{fold(text)} | {heard(text)}")
        if exact is not None or not asked:
            return exact
        fuzzy = extract_choice(text, spec.choices)
        return fuzzy.value if fuzzy and fuzzy.confidence >= CHOICE_CONFIDENCE else None
    if spec.type == "name":
        return _name(spec, text, asked=asked)
    if spec.type == "address":  # a street is distinctive enough, asked for or not
        address = extract_address(text)
        return address.value if address else None
    if spec.phone:  # ten digits in a row are a phone number, asked for or not
        phone = extract_phone(text)
        return phone.value if phone and (asked or phone.confidence >= 0.9) else None
    if not (asked or _NUMBER_CUE.search(fold(text))):
        return None
    number = extract_policy(text, digits=spec.digits)
    return number.value if number else None
