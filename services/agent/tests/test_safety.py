"""Crisis and emergency detection: every crisis line of the corpus (both halves) is caught,
and at most 2 % of its other lines raise a false alarm."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import pytest

from voicemesh.agent.safety import HANDOFF_REASONS, Detection, detect
from voicemesh.testkit.corpus import load_corpus

MAX_FALSE_ALARMS = 0.02


def test_recall_and_false_alarms_on_the_corpus() -> None:
    crisis_turns = missed = false_alarms = other_turns = reason_agrees = 0
    missed_lines: list[str] = []
    alarm_lines: list[str] = []
    for call in load_corpus():
        for turn in call.turns:
            found = detect(turn.say, call.vertical)
            if turn.crisis:
                crisis_turns += 1
                if found is None:
                    missed += 1
                    missed_lines.append(f"{call.id}: {turn.say}")
                elif found.reason == call.outcome.reason:
                    reason_agrees += 1
            else:
                other_turns += 1
                if found is not None:
                    false_alarms += 1
                    alarm_lines.append(f"{call.id}: {turn.say} ({found.phrase})")
    print(
        f"\ncrisis recall {crisis_turns - missed}/{crisis_turns}, hand-off reason as labelled "
        f"{reason_agrees}/{crisis_turns}, false alarms {false_alarms}/{other_turns}"
    )
    assert crisis_turns >= 30
    assert missed == 0, missed_lines
    assert false_alarms / other_turns <= MAX_FALSE_ALARMS, alarm_lines


@pytest.mark.parametrize("split", ["tune", "heldout"])
@pytest.mark.parametrize("vertical", ["healthcare", "behavioral_health"])
def test_every_crisis_call_is_caught_in_each_half(
    split: Literal["tune", "heldout"], vertical: str
) -> None:
    calls = [call for call in load_corpus(split, vertical) if call.has_crisis]
    assert calls
    for call in calls:
        assert any(detect(t.say, vertical) for t in call.turns if t.crisis), call.id


@pytest.mark.parametrize(
    ("vertical", "line", "category"),
    [
        # phrasings the corpus does not contain
        ("behavioral_health", "Honestly I think I'd rather be dead.", "self_harm"),
        ("behavioral_health", "I keep thinking about ending my life.", "self_harm"),
        ("behavioral_health", "There's no reason to live anymore.", "self_harm"),
        ("behavioral_health", "I just want everything to stop.", "self_harm"),
        ("behavioral_health", "I feel like such a burden to everyone.", "self_harm"),
        ("healthcare", "My father is having chest pains and he's gone grey.", "medical_emergency"),
        ("healthcare", "She's not breathing!", "medical_emergency"),
        ("healthcare", "No, no, she's not breathing.", "medical_emergency"),
        ("healthcare", "I cannot breathe properly.", "medical_emergency"),
        ("healthcare", "He overdosed on his pain meds.", "medical_emergency"),
        ("salon", "I'm going to kill myself.", "threat_to_life"),
        ("legal", "He's hitting me right now.", "threat_to_life"),
        ("legal", "My ex said he'd kill me if I went to court.", "threat_to_life"),
        ("salon", "He's going to hurt my kids, he's outside.", "threat_to_life"),
        ("real_estate", "The tenant says there's a gas leak in the basement.", "threat_to_life"),
        ("insurance", "My wife collapsed at the wheel.", "threat_to_life"),
    ],
)
def test_crises_said_other_ways(vertical: str, line: str, category: str) -> None:
    found = detect(line, vertical)
    assert found is not None and found.category == category
    assert found.reason == HANDOFF_REASONS[found.category]


@pytest.mark.parametrize(
    ("vertical", "line"),
    [
        ("salon", "That colour is to die for."),
        ("salon", "My roots are killing me, I need highlights."),
        ("healthcare", "I'm dying of boredom in this waiting room."),
        ("healthcare", "I don't have any chest pain, it's just a cough."),
        ("healthcare", "I'm not having trouble breathing, I need a refill."),
        ("healthcare", "I need my flu shot."),
        ("behavioral_health", "I'm dead tired after work, can we do mornings?"),
        ("behavioral_health", "My dad died in the spring and I'd like grief counselling."),
        ("insurance", "My garage caught fire last week, everyone's fine."),
        ("insurance", "Someone broke into my car and took my bag."),
        ("legal", "It's a wrongful death case."),
        ("real_estate", "That kitchen is killer."),
        ("real_estate", "No way, that's too far from the shops."),
        ("salon", "I'd kill for a Saturday slot."),
        ("salon", "Is the wax going to hurt?"),
        ("insurance", "It's going to kill me if the premium goes up again."),
    ],
)
def test_figures_of_speech_and_denials_are_not_crises(vertical: str, line: str) -> None:
    assert detect(line, vertical) is None


def test_a_denied_suicide_mention_still_hands_off_on_behavioral_health_only() -> None:
    line = "I'm not suicidal or anything, I just need to move my appointment."
    found = detect(line, "behavioral_health")
    assert found == Detection("self_harm", "suicidal", negated=True)
    assert detect(line, "salon") is None
    assert detect("I'm not going to hurt myself.", "legal") is None


def test_indirect_phrasings_count_only_on_health_lines() -> None:
    line = "I can't do this anymore."
    assert detect(line, "behavioral_health") is not None
    assert detect(line, "salon") is None


# --- the session's screening: the safety reply and its hand-off, for every provider ---------


def test_screening_answers_with_the_profiles_message_and_the_right_hand_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from voicemesh.agent.profiles import ProfileLibrary
    from voicemesh.agent.screening import screen
    from voicemesh.common.contracts.events import HandoffReason

    library = ProfileLibrary()
    behavioral, clinic = library.get("behavioral_health"), library.get("healthcare")
    with caplog.at_level("DEBUG"):
        crisis = screen(behavioral, "Honestly everyone would be better off without me.")
        emergency = screen(clinic, "My dad has crushing chest pain and he's sweating.")
        threat = screen(library.get("salon"), "He's outside with a knife, he says he'll kill me.")
    assert crisis is not None and crisis.handoff is HandoffReason.CRISIS
    assert crisis.text == behavioral.policies.crisis_message
    assert emergency is not None and emergency.handoff is HandoffReason.EMERGENCY
    assert "nine one one" in emergency.text and emergency.text == clinic.policies.emergency_message
    assert threat is not None and threat.handoff is HandoffReason.EMERGENCY
    assert "nine one one" in threat.text
    assert screen(library.get("salon"), "I'm dying to get this haircut, honestly.") is None
    assert screen(clinic, "No chest pain or anything, I just need a checkup.") is None
    assert not any("chest" in r.getMessage() or "knife" in r.getMessage() for r in caplog.records)


async def test_a_streamed_reply_that_would_say_a_line_a_third_time_is_a_hand_off() -> None:
    from collections.abc import AsyncGenerator

    from voicemesh.agent.profiles import ProfileLibrary
    from voicemesh.agent.providers.base import CallContext, Reply
    from voicemesh.agent.screening import RepeatGuard
    from voicemesh.common.contracts.events import HandoffReason
    from voicemesh.common.contracts.tenancy import Tenant, Vertical

    context = CallContext(
        tenant=Tenant(id="t-guard", vertical=Vertical("salon")),
        call_id="call-guard",
        profile=ProfileLibrary().get("salon"),
        tools=None,  # type: ignore[arg-type]  # the call's number is unknown: no text sent
        now=lambda: datetime.now(UTC),
    )
    closed: list[bool] = []

    async def sentences(*lines: str) -> AsyncGenerator[str, None]:
        try:
            for line in lines:
                yield line
        finally:
            closed.append(True)

    guard = RepeatGuard(context)
    asked = "What day and time would you like? Any day works."
    for _ in range(2):
        reply = await guard.vet(Reply("", sentences=sentences("What day and time would you like?")))
        assert reply.sentences is not None
        said = [line async for line in reply.sentences]
        guard.said(" ".join([*said, "Any day works."]) if said else asked)
    third = await guard.vet(Reply("", sentences=sentences("What day and time would you like?")))
    assert third.handoff is HandoffReason.NOT_UNDERSTOOD and third.hangup
    assert closed[-1]  # the model's stream was stopped, never voiced
    fresh = await guard.vet(Reply("Which service would you like?"))
    assert fresh.handoff is None
