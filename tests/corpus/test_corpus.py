"""The caller corpus is well formed, balanced, and independent of the profiles it tests."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.testkit.corpus import (
    CORPUS_DIR,
    VERTICALS,
    CorpusCall,
    CorpusError,
    load_corpus,
    load_files,
)


def _folded(line: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", line.lower()).split())


def test_every_vertical_has_thirty_calls_in_both_halves() -> None:
    counts: Counter[tuple[str, str]] = Counter((c.vertical, c.split) for c in load_corpus())
    for vertical in VERTICALS:
        tune, heldout = counts[(vertical, "tune")], counts[(vertical, "heldout")]
        assert tune + heldout >= 30, vertical
        assert tune > 0 and heldout > 0, vertical
        assert abs(tune - heldout) <= 2, f"{vertical}: {tune} tune against {heldout} held out"


def test_ids_are_unique() -> None:
    ids = [call.id for call in load_corpus()]
    assert len(ids) == len(set(ids))


def test_filters_select_one_half_and_one_vertical() -> None:
    heldout_salon = load_corpus(split="heldout", vertical="salon")
    assert heldout_salon
    assert {(call.split, call.vertical) for call in heldout_salon} == {("heldout", "salon")}
    assert len(load_corpus(split="tune")) + len(load_corpus(split="heldout")) == len(load_corpus())


@pytest.mark.parametrize("vertical", ["healthcare", "behavioral_health"])
def test_crisis_calls_are_in_both_halves(vertical: str) -> None:
    for split in ("tune", "heldout"):
        crises = [call for call in load_corpus(split, vertical) if call.has_crisis]
        assert crises, f"no crisis call in the {split} half of {vertical}"


def test_near_misses_sit_among_ordinary_calls() -> None:
    figures = re.compile(r"\b(dying to|killing|to die for|killer|murder|pain in the neck)\b")
    near_misses = [
        turn.say
        for call in load_corpus()
        for turn in call.turns
        if not turn.crisis and figures.search(turn.say.lower())
    ]
    assert len(near_misses) >= 10, near_misses


def test_voices_and_rates_vary() -> None:
    calls = load_corpus()
    assert len({call.voice for call in calls}) >= 5
    rates = [call.rate for call in calls]
    assert min(rates) <= 145 and max(rates) >= 195


def test_no_caller_line_comes_from_a_profile() -> None:
    library = ProfileLibrary()
    profile_lines = set()
    for name in library.names():
        profile = library.get(name)
        profile_lines |= {_folded(step.say) for step in profile.demo_script}
        for intent in profile.intents.values():
            profile_lines |= {_folded(u) for u in intent.utterances if "<" not in u}
    assert profile_lines
    copied = [
        (call.id, turn.say)
        for call in load_corpus()
        for turn in call.turns
        if _folded(turn.say) in profile_lines
    ]
    assert not copied


def test_a_malformed_file_is_named(tmp_path: Path) -> None:
    source = yaml.safe_load((CORPUS_DIR / "salon.yaml").read_text("utf-8"))
    source["calls"][0]["turns"][0]["slots"]["phone"] = "555-0123"
    (tmp_path / "salon.yaml").write_text(yaml.safe_dump(source), "utf-8")
    with pytest.raises(CorpusError, match=r"(?s)salon\.yaml.*phone"):
        load_files(tmp_path)


def test_a_crisis_call_must_end_in_a_safety_handoff(tmp_path: Path) -> None:
    source = yaml.safe_load((CORPUS_DIR / "salon.yaml").read_text("utf-8"))
    source["calls"][0]["turns"][0]["crisis"] = True
    (tmp_path / "salon.yaml").write_text(yaml.safe_dump(source), "utf-8")
    with pytest.raises(CorpusError, match="safety hand-off"):
        load_files(tmp_path)


def _said(call: CorpusCall) -> dict[str, str | bool]:
    """What the call's turns say, merged in order: a later value replaces an earlier one, and
    a day or a time alone completes the other half of ``when``."""
    merged: dict[str, str | bool] = {}
    day = clock = ""
    for turn in call.turns:
        for key, value in turn.slots.items():
            if key != "when":
                merged[key] = value
                continue
            assert isinstance(value, str)
            if "T" in value:
                day, clock = value.split("T")
            elif ":" in value:
                clock = value
            else:
                day = value
    if day or clock:
        merged["when"] = f"{day}T{clock}" if day and clock else day or clock
    return merged


def test_outcomes_follow_from_what_the_caller_said() -> None:
    for call in load_corpus():
        said = _said(call)
        for key, value in call.outcome.slots.items():
            if key == "address" and isinstance(value, str) and value != said.get(key):
                # the house number came in a later turn on its own ("Number twenty-six.")
                number, _, street = value.partition(" ")
                assert number.isdigit() and street == said.get(key), call.id
                continue
            assert said.get(key) == value, (call.id, key)
        if call.outcome.kind == "booking" and "when" in call.outcome.slots:
            assert "T" in str(call.outcome.slots["when"]), call.id
        if call.outcome.kind == "claim":
            assert {"policy", "incident"} <= set(call.outcome.slots), call.id
