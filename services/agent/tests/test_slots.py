"""Slots from free speech, measured on the caller corpus: floors set on its tuning half, the
held-out figures printed."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from voicemesh.agent.slots import (
    Slot,
    When,
    extract_address,
    extract_choice,
    extract_name,
    extract_phone,
    extract_policy,
    extract_when,
    extract_yes_no,
)
from voicemesh.testkit.corpus import REFERENCE_NOW, CorpusCall, load_corpus, load_files

#: accuracy measured on the tuning half (on the written lines, before any recogniser) when
#: these extractors were written; a change that lowers one fails here. ``choice`` misses are
#: callers naming a service by their need ("a pain in the neck, can someone see me?" for a
#: sick visit): that takes the profile's synonyms, which the corpus does not pass.
TUNE_FLOORS = {
    "address": 1.0,
    "choice": 0.87,
    "confirm": 1.0,
    "incident": 1.0,
    "name": 0.98,
    "phone": 1.0,
    "policy": 1.0,
    "when": 1.0,
}
CHOICES: dict[str, list[str]] = {
    corpus_file.vertical: corpus_file.choices for corpus_file in load_files()
}


def _extract(key: str, line: str, vertical: str) -> object:
    found: Slot[str] | Slot[bool] | None
    if key == "when":
        when = extract_when(line, REFERENCE_NOW)
        return when.value.iso() if when else None
    if key == "incident":
        when = extract_when(line, REFERENCE_NOW, tense="past")
        return when.value.day.isoformat() if when and when.value.day else None
    if key == "choice":
        found = extract_choice(line, CHOICES[vertical])
    elif key == "confirm":
        found = extract_yes_no(line)
    else:
        extractors = {
            "name": extract_name,
            "address": extract_address,
            "phone": extract_phone,
            "policy": extract_policy,
        }
        found = extractors[key](line)
    if found is not None:
        assert 0.0 < found.confidence <= 1.0
    return found.value if found else None


def _accuracy(calls: list[CorpusCall]) -> dict[str, tuple[int, int, list[str]]]:
    tally: dict[str, tuple[int, int, list[str]]] = defaultdict(lambda: (0, 0, []))
    for call in calls:
        for turn in call.turns:
            for key, expected in turn.slots.items():
                right, total, misses = tally[key]
                got = _extract(key, turn.say, call.vertical)
                if got == expected:
                    tally[key] = (right + 1, total + 1, misses)
                else:
                    tally[key] = (right, total + 1, [*misses, f"{turn.say!r}: {got!r}"])
    return dict(tally)


def test_slot_accuracy_on_the_corpus() -> None:
    tune = _accuracy(load_corpus(split="tune"))
    heldout = _accuracy(load_corpus(split="heldout"))
    print()
    for key in sorted(TUNE_FLOORS):
        t_right, t_total, _ = tune[key]
        h_right, h_total, _ = heldout[key]
        print(
            f"slot {key:9} tune {t_right}/{t_total} = {t_right / t_total:.3f}"
            f"   held-out {h_right}/{h_total} = {h_right / h_total:.3f}"
        )
    for key, floor in TUNE_FLOORS.items():
        right, total, misses = tune[key]
        assert total >= 10, key
        assert right / total >= floor, (key, misses)


NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 12, 10, 9, 0, tzinfo=NEW_YORK)  # a Thursday


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("next Tuesday after lunch, say one o'clock", When(date(2026, 12, 15), time(13, 0))),
        ("tomorrow at half past three", When(date(2026, 12, 11), time(15, 30))),
        ("the 14th", When(date(2026, 12, 14), None)),
        ("the day after tomorrow at eleven", When(date(2026, 12, 12), time(11, 0))),
        ("a week from tomorrow, at two", When(date(2026, 12, 18), time(14, 0))),
        ("Friday next week at 9", When(date(2026, 12, 18), time(9, 0))),
        ("January fifth at 8:30 am", When(date(2027, 1, 5), time(8, 30))),
        ("the third", When(date(2027, 1, 3), None)),
        ("Wednesday at ten, actually make it eleven", When(date(2026, 12, 16), time(11, 0))),
        ("six thirty is right, not six", When(None, time(18, 30))),
        ("monday at ten thirty a m", When(date(2026, 12, 14), time(10, 30))),
        ("at noon", When(None, time(12, 0))),
    ],
)
def test_when_relative_to_now(line: str, expected: When) -> None:
    found = extract_when(line, NOW)
    assert found is not None and found.value == expected


def test_when_in_the_past_and_in_another_zone() -> None:
    last = extract_when("last Tuesday", NOW, tense="past")
    assert last is not None and last.value.day == date(2026, 12, 8)
    ago = extract_when("two days ago", NOW, tense="past")
    assert ago is not None and ago.value.day == date(2026, 12, 8)
    # 01:00 UTC on the 11th is still the 10th in Los Angeles: "tomorrow" is the 11th there
    utc_late = datetime(2026, 12, 11, 1, 0, tzinfo=ZoneInfo("UTC"))
    tomorrow = extract_when("tomorrow at four", utc_late, zone=ZoneInfo("America/Los_Angeles"))
    assert tomorrow is not None
    assert tomorrow.value.combine(ZoneInfo("America/Los_Angeles")) == datetime(
        2026, 12, 11, 16, 0, tzinfo=ZoneInfo("America/Los_Angeles")
    )
    assert extract_when("I'd like a haircut please", NOW) is None


def test_phone_digits_are_not_a_time() -> None:
    assert extract_when("call me at six one seven five five five", NOW) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("It's six one seven, five five five, oh one four two.", "+16175550142"),
        ("617-555-0142", "+16175550142"),
        ("one, six one seven, five five five, oh one four two", "+16175550142"),
        ("five five five oh one eight eight, area code nine one seven", "+19175550188"),
    ],
)
def test_phone_numbers_in_e164(line: str, expected: str) -> None:
    found = extract_phone(line)
    assert found is not None and found.value == expected


def test_a_short_number_is_no_phone_number() -> None:
    assert extract_phone("five five five, oh one two three") is None


def test_a_corrected_policy_number_wins_with_less_confidence() -> None:
    found = extract_policy("six six two oh four nine, wait, no, six six two oh four eight")
    assert found is not None and found.value == "662048" and found.confidence < 0.9
    assert extract_policy("it's four seven two") is None
    long = extract_policy("account one two three four five six seven eight", digits=None)
    assert long is not None and long.value == "12345678"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("yeah", True),
        ("Sure thing.", True),
        ("That's right.", True),
        ("Uh-huh.", True),
        ("nope", False),
        ("No, that's not right.", False),
        ("No, she's fine otherwise.", False),
        ("No, sorry, it's Aurelio with an A. Santangelo, yes.", True),
    ],
)
def test_yes_and_no(line: str, expected: bool) -> None:
    found = extract_yes_no(line)
    assert found is not None and found.value is expected
    assert extract_yes_no("I'd like a blowout") is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("my name is Tobias Ferreira-Lund", "Tobias Ferreira-Lund"),
        ("It's Marisol. Marisol Quenby.", "Marisol Quenby"),
        ("Siobhan Keogh. That's K E O G H.", "Siobhan Keogh"),
        ("this is dana whitfield", "Dana Whitfield"),
    ],
)
def test_names_never_seen(line: str, expected: str) -> None:
    found = extract_name(line)
    assert found is not None and found.value == expected
    assert extract_name("Could you do Tuesday at ten?") is None


def test_addresses_and_choices() -> None:
    address = extract_address("the house on twenty two fifteen Elm Street")
    assert address is not None and address.value == "2215 Elm Street"
    assert extract_address("no way, that's too far") is None
    named = extract_choice("the hair cut, please", {"haircut": [], "colour": ["dye"]})
    assert named is not None and named.value == "haircut"
    synonym = extract_choice("I want to dye it red", {"haircut": [], "colour": ["dye"]})
    assert synonym is not None and synonym.value == "colour"
    assert extract_choice("what time do you close", ["haircut", "colour"]) is None
