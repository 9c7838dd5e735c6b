"""Whole calls over real NATS: caller audio in, agent audio out, tools, transcript.

The agent runs in this process on a real nats-server with JetStream; a simulated gateway
(``SimulatedCaller``) speaks eSpeak audio in real time and listens to what comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from datetime import time as dt_time
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.agent import AgentService, AgentSettings, create_app
from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import CallEnded, EndReason, HandoffReason
from voicemesh.testkit.agent import (
    SimulatedCaller,
    connected_call,
    cough,
    decode_agent_audio,
    follow_script,
)
from voicemesh.testkit.fakes import standard_desk
from voicemesh.testkit.fixtures import wait_until
from voicemesh.testkit.mesh import publish_event

NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=NEW_YORK)
LIBRARY = ProfileLibrary()


@pytest.fixture
async def agent(nats: NatsClient, nats_url: str) -> AsyncIterator[AgentService]:
    await streams.apply(nats.jetstream())
    settings = AgentSettings(nats_urls=[nats_url], agent_provider_timeout_s=3.0)
    service = create_app(settings, now=lambda: NOW)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def _scripted_call(nats: NatsClient, profile: str) -> dict[str, Any]:
    """A caller who answers what the agent asks, from the profile's demo script."""
    tenant = f"demo-{profile.replace('_', '-')}"
    desk = standard_desk(nats, tenant)
    await desk.start()
    try:
        async with connected_call(nats, tenant, f"call-{profile}", profile) as caller:
            greeting = await follow_script(caller, LIBRARY.get(profile), timeout=45)
        return {"greeting": greeting, "caller": caller, "desk": desk}
    finally:
        await desk.stop()


async def test_six_verticals_scripted_calls_at_once(agent: AgentService, nats: NatsClient) -> None:
    results = await asyncio.gather(*(_scripted_call(nats, p) for p in LIBRARY.names()))
    for profile, result in zip(LIBRARY.names(), results, strict=True):
        assert result["greeting"] == LIBRARY.get(profile).greeting
        caller: SimulatedCaller = result["caller"]
        script = LIBRARY.get(profile).demo_script
        # The call reached its goal and the agent said its closing line.
        assert script[-2].expect.lower() in " ".join(caller.agent_lines()).lower(), profile
        assert script[-1].expect.lower() in caller.agent_lines()[-1].lower(), profile
        # Both sides are in the transcript with unique segment ids.
        # One reply per caller turn after the greeting ("are you still there?" aside: a
        # busy machine can delay a turn past the silence timer).
        still_there = LIBRARY.get(profile).messages.still_there
        replies = [line for line in caller.agent_lines() if line != still_there]
        assert len(replies) == len(caller.caller_lines()) + 1
        assert len({s.segment_id for s in caller.segments}) == len(caller.segments)
        desk = result["desk"]
        booked = desk.calls("calendar.book") or desk.calls("crm.file_claim")
        assert booked, profile
    # What the agent said is what its audio says: recognise the salon greeting's audio.
    salon = results[LIBRARY.names().index("salon")]["caller"]
    start = salon.audio[0].received_at
    greeting_audio = salon.audio_between(start, salon.speech_started_at[0])
    candidates = [LIBRARY.get(p).greeting for p in LIBRARY.names()]
    assert decode_agent_audio(greeting_audio, candidates) == LIBRARY.get("salon").greeting
    # The salon booking is tomorrow at 3 PM New York time, by the agent's clock.
    salon_desk = results[LIBRARY.names().index("salon")]["desk"]
    tomorrow = NOW.date() + timedelta(days=1)
    expected = datetime.combine(tomorrow, dt_time(15, 0), tzinfo=NEW_YORK).isoformat()
    assert salon_desk.calls("calendar.book")[0].arguments["start"] == expected
    assert not agent.runtime.sessions  # every call hung up and was cleaned away


async def test_barge_in_stops_agent_audio_within_300_ms_and_a_cough_does_not(
    agent: AgentService, nats: NatsClient
) -> None:
    async with connected_call(nats, "demo-legal", "call-barge", "legal") as caller:
        await wait_until(lambda: len(caller.audio) > 25, 10)  # the greeting is playing
        await caller.play(cough())
        await asyncio.sleep(0.5)
        assert not caller.interrupted()
        assert agent.runtime.sessions["call-barge"].interrupts == 0
        # Now the caller really speaks over the agent.
        from voicemesh.agent.speech import speak

        speech = speak("i would like to book a consultation for a divorce")
        started = time.monotonic()
        send = asyncio.create_task(caller.play(speech))
        await wait_until(caller.interrupted, 5)
        await asyncio.sleep(0.3)
        during = [a.received_at for a in caller.audio if a.received_at > started]
        last_greeting_frame = max((t for t in during if t < started + 1.0), default=started)
        assert last_greeting_frame - started <= 0.3, last_greeting_frame - started
        await send
        # The caller's turn after the interruption is answered, never silence.
        reply = await caller.wait_for_agent_line(2, timeout=15)
        legal = LIBRARY.get("legal")
        prompts = [s.prompt for s in legal.slots.values()] + [legal.messages.didnt_catch]
        assert reply in prompts


async def test_caller_audio_that_arrives_in_a_burst_is_still_heard(
    agent: AgentService, nats: NatsClient
) -> None:
    """A network hiccup delivers an utterance's frames all at once: the agent still hears it."""
    from voicemesh.agent.speech import speak
    from voicemesh.common.contracts.audio import AudioFrame, encode_frame, frame_bytes

    desk = standard_desk(nats, "demo-salon")
    await desk.start()
    try:
        async with connected_call(nats, "demo-salon", "call-burst", "salon") as caller:
            await caller.wait_for_agent_line(1, timeout=30)
            said = "i would like to book a haircut with maria tomorrow at three p m"
            pcm = speak(said)
            size = frame_bytes(16000)
            subject = subjects.audio_in("demo-salon", "call-burst")
            for seq, offset in enumerate(range(0, len(pcm), size), start=1_000_000):
                chunk = pcm[offset : offset + size].ljust(size, b"\0")
                await nats.publish(subject, encode_frame(AudioFrame.now(seq, chunk, 16000)))
            await caller.wait_for_agent_line(2, timeout=30)
            # All of it was heard as one utterance (the recogniser may get a word wrong).
            [heard] = caller.caller_lines()
            assert len(set(heard.split()) & set(said.split())) >= len(said.split()) // 2, heard
    finally:
        await desk.stop()


async def test_silence_prompts_then_hangs_up(
    nats: NatsClient, nats_url: str, tmp_path: Any
) -> None:
    await streams.apply(nats.jetstream())
    fast = LIBRARY.get("salon").model_dump(mode="json")
    fast["turn"].update(silence_prompt_s=1.0, silence_hangup_s=1.0)
    fast["name"] = "quick_salon"
    import yaml

    (tmp_path / "quick_salon.yaml").write_text(yaml.safe_dump(fast))
    settings = AgentSettings(
        nats_urls=[nats_url],
        agent_profile_dirs=[tmp_path],
        agent_profiles="demo-salon:quick_salon",
    )
    service = create_app(settings, now=lambda: NOW)
    await service.start()
    try:
        async with connected_call(nats, "demo-salon", "call-quiet", "salon") as caller:
            await wait_until(caller.hung_up, 25)
            lines = caller.agent_lines()
            assert lines[1] == "Are you still there?"
            assert "got disconnected" in lines[2]
    finally:
        await service.stop()


async def test_failing_tools_give_an_apology_and_a_handoff(
    agent: AgentService, nats: NatsClient
) -> None:
    async with connected_call(nats, "demo-insurance", "call-fail", "insurance") as caller:
        await caller.wait_for_agent_line(1, timeout=15)
        await caller.say("can you look up my policy")
        await caller.wait_for_agent_line(2)
        # No crm is running. (A misheard digit makes the agent ask again: answer again.)
        line, heard = caller.agent_lines()[-1], 2
        while "six digit" in line and heard < 5:
            await caller.say("four one two five five one")
            heard += 1
            line = await caller.wait_for_agent_line(heard, timeout=15)
        assert "passing your call to a member of our team" in line
        # The hand-off is a lifecycle event of the call, with its reason.
        await wait_until(lambda: caller.handoffs, 5)
        assert caller.handoffs[0].reason is HandoffReason.PROVIDER_FAILURE
        await wait_until(caller.hung_up, 30)


async def test_crisis_words_get_the_safety_message_and_a_handoff(
    agent: AgentService, nats: NatsClient
) -> None:
    async with connected_call(
        nats, "demo-behavioral-health", "call-crisis", "behavioral_health"
    ) as caller:
        await caller.wait_for_agent_line(1, timeout=15)
        await caller.say("i want to hurt myself")
        line = await caller.wait_for_agent_line(2, timeout=40)
        assert "nine eight eight" in line
        await wait_until(lambda: caller.handoffs, 5)
        assert caller.handoffs[0].reason is HandoffReason.CRISIS


async def test_call_ended_stops_the_conversation(agent: AgentService, nats: NatsClient) -> None:
    async with connected_call(nats, "demo-salon", "call-end", "salon") as caller:
        await wait_until(lambda: "call-end" in agent.runtime.sessions, 5)
        ended = CallEnded(
            tenant="demo-salon", call_id="call-end", source="gateway", reason=EndReason.HANGUP
        )
        await publish_event(nats, ended, subjects.call_lifecycle("demo-salon", "call-end"))
        await wait_until(lambda: "call-end" not in agent.runtime.sessions, 5)

        async def quiet() -> bool:  # frames sent before the end may still be in flight
            count = len(caller.audio)
            await asyncio.sleep(0.3)
            return len(caller.audio) == count

        await wait_until(quiet, 5, what="the agent's voice stops")
        count = len(caller.audio)
        await asyncio.sleep(1.0)
        assert len(caller.audio) == count
