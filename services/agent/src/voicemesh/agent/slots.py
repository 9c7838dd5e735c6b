"""What a caller's free speech says, slot by slot, each with a confidence from 0 to 1.

Every extractor takes one transcript (any recogniser's: ``normalize`` reads numbers said in
words or written in digits alike) and returns a ``Slot``, or ``None`` when the line does not
say it. Where a caller corrects themself ("six six two oh four nine, wait, no, ..."), the
last mention wins at a lower confidence. Days and times are read by ``spoken_time``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from difflib import SequenceMatcher
from typing import Generic, Literal, TypeVar
from zoneinfo import ZoneInfo

from voicemesh.agent.normalize import fold, words
from voicemesh.agent.spoken_time import MONTHS, WEEKDAYS, When, read_when

__all__ = [
    "Slot",
    "When",
    "extract_address",
    "extract_choice",
    "extract_name",
    "extract_phone",
    "extract_policy",
    "extract_when",
    "extract_yes_no",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Slot(Generic[T]):
    """One extracted value and how sure the extractor is of it (0 to 1)."""

    value: T
    confidence: float


def extract_when(
    text: str,
    now: datetime,
    *,
    zone: ZoneInfo | None = None,
    tense: Literal["future", "past"] = "future",
) -> Slot[When] | None:
    """The day and time the caller means, relative to ``now`` in the tenant's ``zone``
    (``spoken_time`` says how relative words are read)."""
    found = read_when(text, now, zone=zone, tense=tense)
    return None if found is None else Slot(found[0], found[1])


_YES = (
    r"yes|yeah|yep|yup|yah|aye|sure|correct|absolutely|definitely|exactly|affirmative"
    r"|certainly|of course|perfect|that works|sounds good|that'?s right|right|go ahead|please do"
    r"|book it|uh huh|mhm|mm hmm|okay|fine|lovely|great"
)
_NO = (
    r"not right|not really|not quite|that'?s wrong|incorrect|wrong|no|nope|nah|negative"
    r"|don'?t|never mind"
)
_YES_NO = re.compile(rf"\b(?:(?P<no>{_NO})|(?P<yes>{_YES}))\b(?! now| away| there)")
_WEAK_YES = frozenset({"okay", "fine", "lovely", "great", "right", "perfect"})


def extract_yes_no(text: str) -> Slot[bool] | None:
    """A yes or a no ("yeah", "that's right", "nope"); the last one said wins."""
    spoken = " ".join(fold(text).replace("uh huh", "uh-huh").split()).replace("uh-huh", "uh huh")
    matches = list(_YES_NO.finditer(spoken))
    if not matches:
        return None
    strong = [m for m in matches if m.group("yes") not in _WEAK_YES]
    deciding = strong or matches
    answer = deciding[-1].group("yes") is not None
    polarities = {m.group("yes") is not None for m in deciding}
    confidence = 0.9 if strong and len(polarities) == 1 else 0.7 if strong else 0.6
    return Slot(answer, confidence)


def _digit_runs(text: str) -> list[str]:
    """Numbers said digit by digit, in groups or written, each as one string of digits."""
    runs: list[str] = []
    current = ""
    for word in [*words(text), ""]:
        if word.isdigit():
            current += word
            continue
        if current:
            runs.append(current)
        current = ""
    return runs


def extract_phone(text: str, *, country_code: str = "1") -> Slot[str] | None:
    """A phone number in E.164 ("+16175550142"); ten digits take ``country_code``."""
    runs = _digit_runs(text)
    numbers = []
    for index, run in enumerate(runs):
        if len(run) == 10:
            numbers.append((f"+{country_code}{run}", 0.95))
        elif len(run) == len(country_code) + 10 and run.startswith(country_code):
            numbers.append((f"+{run}", 0.9))
        elif len(run) == 7 and "area code" in fold(text):
            area = [r for r in runs[:index] + runs[index + 1 :] if len(r) == 3]
            if area:
                numbers.append((f"+{country_code}{area[0]}{run}", 0.8))
    if not numbers:
        return None
    value, confidence = numbers[-1]
    return Slot(value, confidence if len(set(numbers)) == 1 else 0.7)


def extract_policy(text: str, *, digits: int | None = 6) -> Slot[str] | None:
    """A policy or account number said in digits, pairs or "double nine"; with ``digits``
    only a number of that length counts. A correction ("wait, no, ...") wins."""
    runs = [r for r in _digit_runs(text) if (len(r) == digits if digits else len(r) >= 4)]
    if not runs:
        return None
    return Slot(runs[-1], 0.9 if len(set(runs)) == 1 else 0.7)


_STREET_TYPES = {
    "street": "Street",
    "st": "Street",
    "avenue": "Avenue",
    "ave": "Avenue",
    "road": "Road",
    "rd": "Road",
    "lane": "Lane",
    "drive": "Drive",
    "boulevard": "Boulevard",
    "blvd": "Boulevard",
    "court": "Court",
    "place": "Place",
    "way": "Way",
    "terrace": "Terrace",
    "close": "Close",
    "crescent": "Crescent",
    "mews": "Mews",
    "circle": "Circle",
    "parkway": "Parkway",
    "square": "Square",
    "row": "Row",
}
#: street types that are everyday words too: a capital letter or a house number is required
_AMBIGUOUS_TYPES = frozenset({"way", "close", "place", "court", "drive", "square", "circle", "row"})
_NOT_STREET_NAMES = frozenset(
    "the a an on at in near of to that this my your our their his her its and or is it's "
    "one listing house flat home property place condo cottage semi bungalow townhouse rental "
    "what's available for from by with about any no which other".split()
)


def extract_address(text: str) -> Slot[str] | None:
    """A street address ("42 Wexcombe Lane"), the house number optional; "Arbuthnot
    Street, number 77" is read as "77 Arbuthnot Street"."""
    tokens = words(text)
    raw = set(re.findall(r"\b[A-Z][a-z]+\b", text))
    found: Slot[str] | None = None
    for index, word in enumerate(tokens):
        street_type = _STREET_TYPES.get(word)
        if street_type is None or index == 0:
            continue
        if word in _AMBIGUOUS_TYPES and street_type not in raw and not tokens[index - 1].isdigit():
            continue
        name: list[str] = []
        cursor = index - 1
        while cursor >= 0 and len(name) < 2:
            candidate = tokens[cursor]
            if candidate in _NOT_STREET_NAMES or not candidate.replace("'", "").isalpha():
                break
            name.insert(0, candidate)
            cursor -= 1
        if not name:
            continue
        digits: list[str] = []
        while cursor >= 0 and tokens[cursor].isdigit():
            digits.insert(0, tokens[cursor])
            cursor -= 1
        number = "".join(digits)
        after = tokens[index + 1 : index + 3]
        if not number and after[:1] == ["number"] and after[1:] and after[1].isdigit():
            number = after[1]
        street = " ".join([*(w.capitalize() for w in name), street_type])
        found = Slot(f"{number} {street}" if number else street, 0.9 if number else 0.7)
    return found


_NAME_CUES = re.compile(
    r"\b(?:my name is|my name's|name is|name's|this is|it's|it is|i'm|i am|call me|under)\s+$",
    re.IGNORECASE,
)
_NOT_NAMES = frozenset(
    "i i'm i'll i've i'd it's that's name's this the a an hi hello hey hiya yes yeah yep no "
    "nope ok okay oh um uh so well thanks thank please sorry aye sure perfect lovely great correct "
    "right good morning afternoon evening tomorrow today tonight next last my name her his "
    "dr mr mrs ms doctor mister and but or with for on at in to from put call just actually "
    "us christmas english".split()
    + list(WEEKDAYS)
    + MONTHS
)
_NAME_WORD = re.compile(r"[^\W\d_][\w'\-]*", re.UNICODE)


def _name_runs(text: str) -> list[tuple[str, bool, bool]]:
    """Runs of capitalised words: (the run, said after a cue, at the start of a sentence)."""
    runs: list[tuple[str, bool, bool]] = []
    spelled = re.sub(r"\b(?:[A-Z]\b[\s,]*){2,}", " ", text)
    for sentence in re.split(r"[.!?;]+\s*|,\s*(?=[A-Z][a-z]+\s+[A-Z])", spelled):
        for match in re.finditer(r"(?:[^\W\d_][\w'\-]*[\s,]*)+", sentence):
            tokens = list(_NAME_WORD.finditer(match.group(0)))
            run: list[str] = []
            start = 0
            for token in [*tokens, None]:
                word = token.group(0) if token else ""
                usable = word[:1].isupper() and word.lower() not in _NOT_NAMES
                if usable and token is not None:
                    if not run:
                        start = match.start() + token.start()
                    run.append(word)
                    continue
                if run:
                    cued = bool(_NAME_CUES.search(sentence[:start]))
                    runs.append((" ".join(run), cued, not sentence[:start].strip()))
                run = []
    return runs


def extract_name(text: str) -> Slot[str] | None:
    """A person's name the caller gives ("It's Marisol. Marisol Quenby.", "this is Tobias
    Ferreira-Lund"), never looked up in a list; the fullest, latest mention wins."""
    best: Slot[str] | None = None
    for run, cued, first in _name_runs(text):
        size = len(run.split())
        if first and not cued and size == 1 and len(text.split()) > 2:
            continue
        confidence = 0.3 + (0.3 if cued else 0.0) + (0.3 if size >= 2 else 0.0)
        if best is None or confidence >= best.confidence:
            best = Slot(run, confidence)
    if best is None:
        lower = re.search(r"\b(?:my name is|my name's|this is)\s+([a-z]+(?: [a-z]+)?)", fold(text))
        if lower and lower.group(1).split()[0] not in _NOT_NAMES:
            best = Slot(lower.group(1).title(), 0.4)
    return best


#: short words too common to be part of a compound the caller means ("the" in "therapy")
_FUNCTION_WORDS = frozenset(
    "the and for you her his can get not but are was our out any all she him its who how "
    "one two why yes".split()
)


def _word_match(option_word: str, spoken_word: str) -> float:
    """1 for the same word loosely ("highlight"/"highlights"), 0.7 for a part of a compound
    ("cut" in "haircut"), else 0."""
    if SequenceMatcher(None, option_word, spoken_word).ratio() >= 0.8:
        return 1.0
    if (
        len(spoken_word) >= 3
        and spoken_word not in _FUNCTION_WORDS
        and (option_word.endswith(spoken_word) or option_word.startswith(spoken_word))
    ):
        return 0.7
    return 0.0


def extract_choice(
    text: str, options: Sequence[str] | Mapping[str, Sequence[str]]
) -> Slot[str] | None:
    """The option the caller picks, matched loosely ("hair cut", "highlight", "colour");
    ``options`` may map each option to its synonyms. Said twice beats said once; otherwise
    the first one said wins."""
    choices = dict(options) if isinstance(options, Mapping) else {o: [] for o in options}
    spoken = words(text)
    #: each word, and each pair of words written as one ("hair cut" as "haircut")
    candidates = [
        *enumerate(spoken),
        *((i, a + b) for i, (a, b) in enumerate(itertools.pairwise(spoken))),
    ]
    scored: list[tuple[float, int, int, str]] = []
    for option, synonyms in choices.items():
        for form in [option, *synonyms]:
            form_words = [w for w in words(form) if len(w) > 1]
            score = 0.0
            positions: set[int] = set()
            for form_word in form_words:
                weights = [(i, _word_match(form_word, word)) for i, word in candidates]
                best = max((weight for _, weight in weights), default=0.0)
                score += best / len(form_words)
                positions |= {i for i, weight in weights if weight and weight == best}
            if score >= 0.5:
                scored.append((score, len(positions), -min(positions), option))
    if not scored:
        return None
    score, _count, _first, option = max(scored)
    return Slot(option, round(min(0.95, 0.45 + 0.5 * score), 2))
