"""Transcripts in one written form, so "four p.m.", "4 PM" and "4pm" read the same.

The recognisers write numbers, times and spellings their own way (pocketsphinx in words,
Whisper in digits with punctuation). ``words`` turns either into lowercase tokens with
numbers as digits: "five five five, oh one two three" and "555-0123" become ``5550123``,
"half past three" becomes ``3 30``, "the fourteenth" becomes ``the 14th``. The dialog reads
``words(text)``; word error rate compares ``normalize(text)``, which also drops fillers
("um") and the ordinal suffix, and writes every run of adjacent digits as one number.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["fold", "normalize", "ordinal_suffix", "words"]

_Parser = Callable[[list[str], int], "tuple[int, int] | None"]

_UNITS = {
    word: value
    for value, word in enumerate("zero one two three four five six seven eight nine".split())
}
_TEENS = {
    word: value + 10
    for value, word in enumerate(
        "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {
    word: (value + 2) * 10
    for value, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())
}
_ORDINAL_WORDS = {
    word: value + 1
    for value, word in enumerate(
        (
            "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
            "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
        ).split()
    )
} | {"thirtieth": 30}
_MONTHS = frozenset(
    "january february march april may june july august september october november december".split()
)
#: "first" and "second" are ordinals only where a date is likely ("the first", "may second")
_ORDINAL_CUES = frozenset({"the", "of", *_MONTHS})
_FILLERS = frozenset({"um", "umm", "uh", "uhm", "er", "erm", "hmm", "hm", "ah", "eh", "mm"})
#: British spellings written the American way (Whisper's tiny.en model writes American)
_SPELLINGS = {
    "colour": "color",
    "colours": "colors",
    "counselling": "counseling",
    "defence": "defense",
    "neighbour": "neighbor",
    "neighbours": "neighbors",
    "favour": "favor",
    "centre": "center",
    "cheque": "check",
    "ok": "okay",
    "alright": "all right",
    "mr": "mister",
    "mrs": "missus",
}

_MERIDIEM = re.compile(r"(?<![a-z])([ap])\s?\.?\s?m\b\.?")
_CLOCK = re.compile(r"\b(\d{1,2})[:.](\d{2})\b")
_THOUSANDS = re.compile(r"(\d),(\d{3})\b")
_DIGIT_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_PAUSE = re.compile(r"[,.;!?]+(?=\s|$)")
_PUNCTUATION = re.compile(r"[^\w\s':|]|(?<!\d):|:(?!\d)|_")
#: where the caller paused (a comma or a full stop): "seven eighty, two" is not 782
_BREAK = "|"


def ordinal_suffix(number: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``11th``, ``22nd``."""
    if 10 <= number % 100 <= 20:
        return f"{number}th"
    return f"{number}{({1: 'st', 2: 'nd', 3: 'rd'}).get(number % 10, 'th')}"


def _fold_tokens(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = _MERIDIEM.sub(lambda m: f" {m.group(1)}m ", text)
    text = _THOUSANDS.sub(r"\1\2", text)
    text = _CLOCK.sub(r"\1 \2", text)
    text = text.replace("%", " percent ").replace("&", " and ")
    text = _PAUSE.sub(f" {_BREAK} ", text)
    text = _PUNCTUATION.sub(" ", text.replace("-", " "))
    tokens = [word.strip("'") for word in text.split()]
    return [_SPELLINGS.get(word, word) for word in tokens if word]


def fold(text: str) -> str:
    """Lowercase, one kind of apostrophe, "p.m." as ``pm``, "4:30" as ``4 30``, and no
    punctuation but apostrophes inside words."""
    return " ".join(word for word in _fold_tokens(text) if word != _BREAK)


def _below_hundred(tokens: list[str], start: int) -> tuple[int, int] | None:
    word = tokens[start] if start < len(tokens) else ""
    after = tokens[start + 1] if start + 1 < len(tokens) else ""
    if word in _TENS:
        if after in _UNITS and after != "zero":
            return _TENS[word] + _UNITS[after], 2
        return _TENS[word], 1
    value = _TEENS.get(word, _UNITS.get(word))
    return None if value is None else (value, 1)


def _scaled(
    tokens: list[str], start: int, lower: _Parser, scale: str, factor: int
) -> tuple[int, int] | None:
    """A number below ``factor`` (read by ``lower``), optionally times ``scale`` ("hundred")
    and plus another such number ("five hundred and three")."""
    first = lower(tokens, start)
    if first is None:
        return None
    value, used = first
    if value and start + used < len(tokens) and tokens[start + used] == scale:
        value, used = value * factor, used + 1
        rest_at = start + used
        if rest_at < len(tokens) and tokens[rest_at] == "and":
            rest_at += 1
        rest = lower(tokens, rest_at)
        if rest is not None:
            value, used = value + rest[0], rest_at - start + rest[1]
    return value, used


def _below_thousand(tokens: list[str], start: int) -> tuple[int, int] | None:
    return _scaled(tokens, start, _below_hundred, "hundred", 100)


def _spoken_number(tokens: list[str], start: int) -> tuple[int, int] | None:
    """The cardinal spoken at ``tokens[start:]`` as (value, tokens used). Digits said one by
    one ("five five five") are separate numbers; "twenty one" and "five hundred and three"
    are one."""
    return _scaled(tokens, start, _below_thousand, "thousand", 1000)


_ZERO_CUES = frozenset({"is", "number", "code", "policy", "it's", "at", "on"})


def _numbers(tokens: list[str]) -> list[str]:
    """Number words as digits; "oh" among digits as 0; "double five" as 55; "half past
    three" and "half three" as ``3 30``; ordinal words as ``14th``."""
    out: list[str] = []
    index = 0
    while index < len(tokens):
        word = tokens[index]
        after = tokens[index + 1] if index + 1 < len(tokens) else ""
        previous = next((w for w in reversed(out) if w != _BREAK), "")
        if word == _BREAK:
            out.append(word)
            index += 1
            continue
        if word in ("double", "triple") and (
            after in _UNITS or (after.isdigit() and len(after) == 1)
        ):
            digit = str(_UNITS.get(after, after))
            out.append(digit * (2 if word == "double" else 3))
            index += 2
            continue
        if word == "oh" and (previous.isdigit() or (previous in _ZERO_CUES and after in _UNITS)):
            out.append("0")
            index += 1
            continue
        if word == "a" and after in ("hundred", "thousand"):
            spoken = _spoken_number(["one", *tokens[index + 1 :]], 0)
            if spoken is not None:
                out.append(str(spoken[0]))
                index += spoken[1]
                continue
        clock = _clock_phrase(tokens, index, previous)
        if clock is not None:
            out += clock[0]
            index += clock[1]
            continue
        ordinal = _ORDINAL_WORDS.get(word)
        if ordinal is not None and (
            ordinal > 2 or previous in _ORDINAL_CUES or previous in ("20", "30")
        ):
            if previous in ("20", "30") and ordinal < 10 and out[-1] == previous:
                out[-1] = ordinal_suffix(int(previous) + ordinal)
            else:
                out.append(ordinal_suffix(ordinal))
            index += 1
            continue
        spoken = _spoken_number(tokens, index)
        if spoken is not None:
            out.append(str(spoken[0]))
            index += spoken[1]
            continue
        out.append(word)
        index += 1
    return out


def _hour_at(tokens: list[str], start: int) -> tuple[int, int] | None:
    word = tokens[start] if start < len(tokens) else ""
    hour = (int(word), 1) if word.isdigit() else _below_hundred(tokens, start)
    if hour is None or not 1 <= hour[0] <= 12:
        return None
    return hour


def _clock_phrase(tokens: list[str], index: int, previous: str) -> tuple[list[str], int] | None:
    """ "half past three", "quarter to five" and the British "half three" as hour and minutes."""
    word = tokens[index]
    after = tokens[index + 1] if index + 1 < len(tokens) else ""
    if word in ("half", "quarter") and after == "past":
        hour = _hour_at(tokens, index + 2)
        if hour is not None:
            return [str(hour[0]), "30" if word == "half" else "15"], 2 + hour[1]
    if word == "quarter" and after in ("to", "till", "of"):
        hour = _hour_at(tokens, index + 2)
        if hour is not None:
            return [str(hour[0] - 1 or 12), "45"], 2 + hour[1]
    if word == "half" and previous not in ("a", "and", "one"):
        hour = _hour_at(tokens, index + 1)
        if hour is not None:
            return [str(hour[0]), "30"], 1 + hour[1]
    return None


def words(text: str) -> list[str]:
    """The transcript as lowercase tokens, numbers as digits and ordinals as ``14th``."""
    tokens = _numbers(_fold_tokens(text))
    return [
        _DIGIT_ORDINAL.sub(lambda m: ordinal_suffix(int(m.group(1))), word)
        for word in tokens
        if word != _BREAK
    ]


def _join_digit_runs(tokens: list[str]) -> list[str]:
    out: list[str] = []
    run: list[str] = []
    for word in [*tokens, ""]:
        if word.isdigit():
            run.append(word)
            continue
        if run:
            out += ["".join(run)] if len(run) > 1 and sum(map(len, run)) >= 4 else run
            run = []
        if word:
            out.append(word)
    return out


def normalize(text: str) -> str:
    """The form word error rate compares: ``words`` without fillers, "o'clock" or ordinal
    suffixes, and each run of adjacent digit groups (a phone or policy number) as one."""
    tokens = [
        _DIGIT_ORDINAL.sub(r"\1", word)
        for word in words(text)
        if word not in _FILLERS and word not in ("o'clock", "oclock")
    ]
    return " ".join(_join_digit_runs(tokens))
