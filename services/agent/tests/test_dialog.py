"""The offline dialog of every vertical, line by line, with tools answered over real NATS."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.agent.dialog import OfflineConversation, ToolUnavailable
from voicemesh.agent.profiles import ProfileError, ProfileLibrary, SlotSpec
from voicemesh.agent.providers.base import CallContext, CallTools, Reply
from voicemesh.common.contracts.events import HandoffReason, ToolErrorCode, ToolRequest
from voicemesh.common.contracts.tenancy import Tenant, Vertical
from voicemesh.common.contracts.tools import SendSmsArgs, SendSmsResult, ToolFailure
from voicemesh.common.runtime.tools import ToolClient
from voicemesh.testkit.fakes import standard_desk

NEW_YORK = ZoneInfo("America/New_York")
#: Tuesday 24 November 2026, 10:00 in New York
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=NEW_YORK)

LIBRARY = ProfileLibrary()
#: A caller booking a haircut with Maria tomorrow at 3 p.m., line by line.
SALON_BOOKING = [
    "i would like to book a haircut with maria tomorrow at three p m",
    "my name is john smith",
    "five five five one two three four five six seven",
    "yes please",
]


def _conversation(
    nats: NatsClient, tenant: str, profile: str, *, phone: str | None = None
) -> OfflineConversation:
    context = CallContext(
        tenant=Tenant(id=tenant, vertical=Vertical(profile)),
        call_id="call1",
        profile=LIBRARY.get(profile),
        tools=CallTools(ToolClient(nats, source="agent"), tenant, "call1"),
        now=lambda: NOW,
        phone=phone,
    )
    return OfflineConversation(context)


@pytest.mark.parametrize("profile", LIBRARY.names())
async def test_each_vertical_demo_script_reaches_its_goal(nats: NatsClient, profile: str) -> None:
    tenant = f"t-{profile.replace('_', '-')}"
    desk = standard_desk(nats, tenant)
    await desk.start()
    conversation = _conversation(nats, tenant, profile)
    greeting = await conversation.greeting()
    assert greeting.text == LIBRARY.get(profile).greeting
    for step in LIBRARY.get(profile).demo_script:
        reply = await conversation.respond(step.say)
        assert step.expect.lower() in reply.text.lower(), (step.say, reply.text)
    assert reply.hangup
    await desk.stop()
    booked = desk.calls("calendar.book")
    filed = desk.calls("crm.file_claim")
    assert booked or filed
    if booked:
        start = datetime.fromisoformat(booked[-1].arguments["start"])
        assert start.tzinfo is not None and start.utcoffset() == NOW.utcoffset()
        assert desk.calls("sms.send"), "a confirmation text is sent"
        # To the call's verified number (the service's to decide): a template of the time.
        text = desk.calls("sms.send")[-1].arguments
        assert text["template"] == "appointment_booked" and text["start"] == start.isoformat()
        assert {"to", "body"}.isdisjoint(text), text


async def test_salon_books_tomorrow_at_three_pm_local_time(nats: NatsClient) -> None:
    desk = standard_desk(nats, "t-salon")
    await desk.start()
    conversation = _conversation(nats, "t-salon", "salon")
    for line in SALON_BOOKING:
        reply = await conversation.respond(line)
    assert "all set" in reply.text
    (book,) = desk.calls("calendar.book")
    assert book.arguments["start"] == "2026-11-25T15:00:00-05:00"
    assert book.arguments["name"] == "John Smith"
    assert book.idempotency_key
    (sms,) = desk.calls("sms.send")
    assert sms.arguments == {
        "template": "appointment_booked",
        "start": "2026-11-25T15:00:00-05:00",
        "staff": "Maria",
        "purpose": "confirmation",
    }


async def test_a_refused_text_is_never_claimed_as_sent(nats: NatsClient) -> None:
    # A call with no verified number cannot be texted: sms answers ``forbidden``.
    desk = standard_desk(nats, "t-salon")

    @desk.on("sms.send")
    async def refuse(request: ToolRequest, args: SendSmsArgs) -> SendSmsResult:
        raise ToolFailure(ToolErrorCode.FORBIDDEN, "this call has no verified number to text")

    await desk.start()
    conversation = _conversation(nats, "t-salon", "salon")
    for line in SALON_BOOKING:
        reply = await conversation.respond(line)
    await desk.stop()
    assert "all set" in reply.text and "text" not in reply.text.lower(), reply.text
    assert desk.calls("calendar.book") and desk.calls("sms.send")


async def test_a_taken_slot_asks_for_another_time_then_books(nats: NatsClient) -> None:
    desk = standard_desk(nats, "t-salon")
    await desk.start()
    first = _conversation(nats, "t-salon", "salon")
    for line in ["book a color with james monday at ten a m", "it's mary lee",
                 "five five five one one one two two two two", "yes"]:  # fmt: skip
        await first.respond(line)
    second = _conversation(nats, "t-salon", "salon")
    second._ctx.call_id = "call2"
    for line in ["book a color with james monday at ten a m", "it's anna taylor",
                 "five five five three three three two two two two"]:  # fmt: skip
        await second.respond(line)
    reply = await second.respond("yes")
    assert "already taken" in reply.text
    reply = await second.respond("how about monday at eleven a m")
    assert "Shall I book it" in reply.text
    reply = await second.respond("yes")
    assert "all set" in reply.text
    starts = [r.arguments["start"] for r in desk.calls("calendar.book")]
    assert starts == ["2026-11-30T10:00:00-05:00"] * 2 + ["2026-11-30T11:00:00-05:00"]


async def test_legal_conflict_declines_without_booking(nats: NatsClient) -> None:
    desk = standard_desk(nats, "t-legal", conflicted={"David Wilson"})
    await desk.start()
    conversation = _conversation(nats, "t-legal", "legal")
    await conversation.respond("i would like to book a consultation about a divorce")
    await conversation.respond("my name is sarah wilson")
    reply = await conversation.respond("david wilson")
    assert "conflict of interest" in reply.text and reply.hangup
    assert desk.calls("crm.conflict_check")[0].arguments == {
        "parties": ["Sarah Wilson", "David Wilson"]
    }
    assert not desk.calls("calendar.book")


async def test_insurance_policy_lookup_reads_the_policy(nats: NatsClient) -> None:
    desk = standard_desk(nats, "t-ins")
    await desk.start()
    conversation = _conversation(nats, "t-ins", "insurance")
    reply = await conversation.respond("can you look up my policy")
    assert "six digit" in reply.text
    reply = await conversation.respond("nine nine nine nine nine nine")
    assert "couldn't find" in reply.text
    reply = await conversation.respond("four one two five five one")
    assert "Anna Garcia is active" in reply.text and "500 dollars" in reply.text


async def test_unexpected_tool_failure_raises_for_the_apology(nats: NatsClient) -> None:
    # No tool services at all: the booking cannot be made and the dialog says so loudly.
    conversation = _conversation(nats, "t-salon", "salon")
    for line in ["book a manicure with sophie friday at two p m", "my name is emma brown",
                 "five five five one two three four five six seven"]:  # fmt: skip
        await conversation.respond(line)
    with pytest.raises(ToolUnavailable):
        await conversation.respond("yes")


async def test_a_seventh_vertical_is_a_new_file(nats: NatsClient, tmp_path: Path) -> None:
    text = (Path(__file__).parent / "data" / "veterinary.yaml").read_text()
    (tmp_path / "veterinary.yaml").write_text(text)
    library = ProfileLibrary([tmp_path])
    assert "veterinary" in library.names()
    desk = standard_desk(nats, "t-vet")
    await desk.start()
    context = CallContext(
        tenant=Tenant(id="t-vet", vertical=Vertical.SALON),
        call_id="call9",
        profile=library.get("veterinary"),
        tools=CallTools(ToolClient(nats, source="agent"), "t-vet", "call9"),
        now=lambda: NOW,
    )
    conversation = OfflineConversation(context)
    for step in library.get("veterinary").demo_script:
        reply = await conversation.respond(step.say)
        assert step.expect.lower() in reply.text.lower(), (step.say, reply.text)
    (book,) = desk.calls("calendar.book")
    assert book.arguments["start"] == "2026-11-26T09:00:00-05:00"


def test_a_profile_with_unpronounceable_words_is_refused(tmp_path: Path) -> None:
    text = (Path(__file__).parent / "data" / "veterinary.yaml").read_text()
    (tmp_path / "broken.yaml").write_text(
        text.replace("name: veterinary", "name: broken").replace(
            "[rex, bella, max]", "[rex, xqzzy]"
        )
    )
    with pytest.raises(ProfileError, match="xqzzy"):
        ProfileLibrary([tmp_path])


async def test_is_complete_knows_a_whole_answer_from_a_pause(nats: NatsClient) -> None:
    """A short pause ends the turn only when the words already answer the question."""
    desk = standard_desk(nats, "t-salon")
    await desk.start()
    conversation = _conversation(nats, "t-salon", "salon")
    await conversation.respond("i would like to book a haircut with maria tomorrow at three p m")
    assert conversation.state.pending == "name"
    assert not conversation.is_complete("my name is mary")  # a surname may follow
    assert conversation.is_complete("my name is mary jones")
    await conversation.respond("my name is mary jones")
    assert conversation.state.pending == "phone"
    assert not conversation.is_complete("five five five two three four")
    assert conversation.is_complete("five five five two three four five six seven eight")
    state = (conversation.state.pending, dict(conversation.state.slots))
    await conversation.respond("five five five two three four five six seven eight")
    assert conversation.state.confirming
    assert conversation.is_complete("yes please") and conversation.is_complete("no")
    assert not conversation.is_complete("um")
    assert state[0] == "phone"  # is_complete changed nothing
    await desk.stop()


# --- no loop, ever: an uncooperative caller on every slot of every intent of every profile ---

CALLER = "+16175550100"
NONSENSE = "the purple elephant sings"


def _value(spec: SlotSpec) -> Any:
    if spec.type == "choice":
        return next(iter(spec.choices))
    if spec.type == "datetime":
        return NOW.replace(day=26, hour=14)
    if spec.type == "name":
        return "Sam Caller"
    return CALLER if spec.phone else "4" * spec.digits


def _cases() -> list[tuple[str, str, str]]:
    return [
        (profile, intent, slot)
        for profile in LIBRARY.names()
        for intent, spec in LIBRARY.get(profile).intents.items()
        for slot in spec.slots
    ]


def _assert_no_line_thrice(lines: list[str]) -> None:
    for first, second, third in zip(lines, lines[1:], lines[2:], strict=False):
        assert not (first == second == third), lines


@pytest.mark.parametrize(("profile", "intent", "slot"), _cases())
async def test_an_uncooperative_caller_is_handed_to_a_person(
    nats: NatsClient, profile: str, intent: str, slot: str
) -> None:
    tenant = f"t-stuck-{profile.replace('_', '-')}"
    desk = standard_desk(nats, tenant)
    await desk.start()
    conversation = _conversation(nats, tenant, profile, phone=CALLER)
    spec = LIBRARY.get(profile)
    conversation.state.intent = intent
    for earlier in spec.intents[intent].slots[: spec.intents[intent].slots.index(slot)]:
        conversation.state.slots[earlier] = _value(spec.slots[earlier])
    conversation.state.slots.pop(slot, None)
    lines: list[str] = []
    reply = Reply("")
    for _ in range(6):
        reply = await conversation.respond(NONSENSE)
        lines.append(reply.text)
        if reply.hangup:
            break
    await desk.stop()
    asks = lines[:-1]
    if spec.slots[slot].ask_once:  # asked once, then the dialog moves on to the next slot
        assert asks[0] == spec.slots[slot].prompt and asks[1] != asks[0], lines
        asks = asks[1:]
    assert len(asks) == 3 and len(set(asks)) == 3, lines  # asked three different ways
    _assert_no_line_thrice(lines)
    assert reply.handoff is HandoffReason.NOT_UNDERSTOOD and reply.hangup, lines
    (text,) = desk.calls("sms.send")
    assert text.arguments["template"] == "callback"
    assert spec.messages.goodbye in reply.text


@pytest.mark.parametrize("profile", LIBRARY.names())
async def test_a_caller_never_understood_at_the_menu_is_handed_off(
    nats: NatsClient, profile: str
) -> None:
    conversation = _conversation(nats, f"t-menu-{profile.replace('_', '-')}", profile, phone=CALLER)
    lines = [(await conversation.respond(NONSENSE)).text for _ in range(4)]
    assert len(set(lines)) == 4, lines
    final = await conversation.respond("")
    assert final.handoff is None or final.handoff is HandoffReason.NOT_UNDERSTOOD


async def test_a_confirmation_never_answered_is_handed_off(nats: NatsClient) -> None:
    conversation = _conversation(nats, "t-confirm", "salon", phone=CALLER)
    await conversation.respond("i would like a haircut tomorrow at three p m")
    reply = await conversation.respond("my name is mary jones")
    assert "Shall I book it" in reply.text  # the call's number is known: not asked
    lines = [(await conversation.respond(NONSENSE)).text for _ in range(2)]
    assert len({reply.text, *lines}) == 3, lines  # a yes or no asked three ways
    final = await conversation.respond(NONSENSE)
    assert final.handoff is HandoffReason.NOT_UNDERSTOOD and final.hangup


async def test_asking_for_a_person_hands_off_at_once(nats: NatsClient) -> None:
    conversation = _conversation(nats, "t-person", "insurance", phone=CALLER)
    reply = await conversation.respond("Can I just speak to a real person, please?")
    assert reply.handoff is HandoffReason.CALLER_ASKED and reply.hangup
