"""Turn-taking, captions, silence and hand-off: ``CallSession`` on the in-memory ``CallIO``.

No server: the session runs the real offline provider (pocketsphinx, the profile's dialog,
eSpeak) or a scripted conversation built on the provider contract, and talks to a caller in
memory that speaks eSpeak audio in real time. Each call is kept short, so these run in
seconds (``test_calls.py`` has the same behaviour over real NATS).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.trace import NoOpTracer

from voicemesh.agent.profiles import Profile, ProfileLibrary
from voicemesh.agent.providers.base import (
    CallContext,
    CallTools,
    Conversation,
    ProviderError,
    Reply,
)
from voicemesh.agent.providers.offline import EspeakSynthesizer, OfflineProvider
from voicemesh.agent.session import CallSession
from voicemesh.common.contracts.events import HandoffReason, Speaker
from voicemesh.common.contracts.tenancy import Tenant, Vertical
from voicemesh.common.runtime.speech import speak
from voicemesh.common.runtime.tools import ToolClient
from voicemesh.testkit.agent import MemoryCaller, MemoryCallIO, cough
from voicemesh.testkit.fixtures import wait_until

LIBRARY = ProfileLibrary()
OFFLINE = OfflineProvider()  # its recognisers are loaded once and lent to every test's call


def quick(name: str, **turn: Any) -> Profile:
    """``name``'s profile with a one-word greeting and short fixed lines: quick calls."""
    profile = LIBRARY.get(name)
    messages = profile.messages.model_copy(
        update={
            "still_there": "Still there?",
            "silence_goodbye": "Goodbye then.",
            "apology": "Sorry, goodbye.",
        }
    )
    return profile.model_copy(
        update={
            "greeting": "Hello.",
            "messages": messages,
            "turn": profile.turn.model_copy(update=turn),
        }
    )


class ScriptedProvider:
    """The offline provider's ears and voice with a scripted conversation."""

    name = "scripted"

    def __init__(self, conversation: Conversation) -> None:
        self._conversation = conversation

    def transcriber(self, context: CallContext) -> Any:
        return OFFLINE.transcriber(context)

    def synthesizer(self, context: CallContext) -> EspeakSynthesizer:
        return OFFLINE.synthesizer(context)

    def conversation(self, context: CallContext) -> Conversation:
        return self._conversation

    async def close(self) -> None:
        return None


class Call:
    """One session on a ``MemoryCallIO``, and what it did."""

    def __init__(self, profile: Profile, provider: Any = OFFLINE) -> None:
        self.io = MemoryCallIO()
        self.finished: list[str] = []
        vertical = Vertical(profile.vertical)
        context = CallContext(
            tenant=Tenant(id=f"t-{profile.name.replace('_', '-')}", vertical=vertical),
            call_id="call-1",
            profile=profile,
            # No tool is called in these calls: a tool client with no connection.
            tools=CallTools(ToolClient(None, source="test"), "t", "call-1"),  # type: ignore[arg-type]
            now=lambda: datetime.now(UTC),
        )

        async def finished(call_id: str) -> None:
            self.finished.append(call_id)
            await self.session.stop()

        self.session = CallSession(
            io=self.io,
            context=context,
            provider=provider,
            fallback=EspeakSynthesizer(profile),
            tracer=NoOpTracer(),
            on_finished=finished,
        )

    @property
    def caller(self) -> MemoryCaller:
        return self.io.caller


@pytest.fixture
async def start_call() -> AsyncIterator[Callable[..., Awaitable[Call]]]:
    calls: list[Call] = []

    async def start(profile: Profile, provider: Any = OFFLINE) -> Call:
        call = Call(profile, provider)
        calls.append(call)
        await call.session.start()
        return call

    yield start
    for call in calls:
        await call.session.stop()


async def test_speaking_over_the_agent_stops_its_audio_within_300_ms(
    start_call: Callable[..., Awaitable[Call]],
) -> None:
    call = await start_call(LIBRARY.get("legal"))  # a long greeting
    caller = call.caller
    await wait_until(lambda: len(caller.audio) > 10, 5, what="the greeting to play")
    speech = speak("i would like to book a consultation for a divorce")
    started = time.monotonic()
    speaking = asyncio.create_task(caller.play(speech))
    try:
        await wait_until(caller.interrupted, 2, what="the barge-in")
        last_frame = caller.audio[-1].received_at
        assert last_frame - started <= 0.3, last_frame - started
        assert call.session.interrupts == 1
        # Cut off, not paused: nothing more of the greeting comes.
        count = len(caller.audio)
        await asyncio.sleep(0.2)
        assert len(caller.audio) == count
    finally:
        speaking.cancel()


async def test_a_cough_does_not_stop_the_agent(start_call: Callable[..., Awaitable[Call]]) -> None:
    call = await start_call(LIBRARY.get("legal"))
    caller = call.caller
    await wait_until(lambda: len(caller.audio) > 10, 5, what="the greeting to play")
    coughed_at = time.monotonic()
    await caller.play(cough())
    # The agent goes on speaking through it and for well after it.
    await wait_until(lambda: caller.audio[-1].received_at > coughed_at + 0.6, 3)
    assert not caller.interrupted()
    assert call.session.interrupts == 0
    assert not caller.caller_lines()  # nor is the cough a turn


class StreamedGreeting:
    """Greets with two sentences written 0.4 s apart, as a model writes them."""

    SENTENCES = ("Hello there.", "Yes?")

    async def greeting(self) -> Reply:
        reply = Reply("")

        async def sentences() -> AsyncGenerator[str, None]:
            for index, sentence in enumerate(self.SENTENCES):
                if index:
                    await asyncio.sleep(0.4)  # the model is still writing
                reply.text = " ".join(self.SENTENCES[: index + 1])
                yield sentence

        reply.sentences = sentences()
        return reply

    async def respond(self, text: str) -> Reply:
        return Reply("Goodbye.", hangup=True)


async def test_a_streamed_line_is_captioned_while_it_plays_then_written_whole(
    start_call: Callable[..., Awaitable[Call]],
) -> None:
    call = await start_call(quick("salon"), ScriptedProvider(StreamedGreeting()))
    caller = call.caller
    whole = " ".join(StreamedGreeting.SENTENCES)
    await wait_until(caller.agent_lines, 6, what="the greeting's final segment")
    [final] = caller.segments
    assert (final.speaker, final.text, final.final) == (Speaker.AGENT, whole, True)
    partials = [segment for _, segment in caller.captions]
    # Partial segments under the line's id, growing a sentence at a time, before the final.
    assert [p.text for p in partials] == [StreamedGreeting.SENTENCES[0], whole]
    assert all(not p.final and p.segment_id == final.segment_id for p in partials)
    assert caller.captions[0][0] < caller.audio[-1].received_at  # shown while it played


async def test_silence_gets_a_prompt_then_a_goodbye_and_a_hang_up(
    start_call: Callable[..., Awaitable[Call]],
) -> None:
    profile = quick("salon", silence_prompt_s=0.4, silence_hangup_s=0.4)
    call = await start_call(profile)
    await wait_until(lambda: call.finished, 8, what="the hang-up")
    caller = call.caller
    assert caller.agent_lines() == ["Hello.", "Still there?", "Goodbye then."]
    assert caller.hung_up() and call.finished == ["call-1"]
    greeting, prompt, _ = caller.segments
    assert prompt.start_s - greeting.end_s >= 0.4  # asked only after the silence
    assert not caller.caller_lines()


class BrokenConversation:
    """A provider that fails from the start."""

    async def greeting(self) -> Reply:
        raise ProviderError("the model is down")

    async def respond(self, text: str) -> Reply:
        raise ProviderError("the model is down")


async def test_a_failing_provider_hands_the_call_off_with_the_reason(
    start_call: Callable[..., Awaitable[Call]],
) -> None:
    profile = quick("insurance")
    call = await start_call(profile, ScriptedProvider(BrokenConversation()))
    caller = call.caller
    await wait_until(lambda: caller.handoffs and caller.audio, 5, what="the hand-off")
    [handoff] = caller.handoffs
    assert handoff.reason is HandoffReason.PROVIDER_FAILURE
    assert (handoff.tenant, handoff.call_id) == ("t-insurance", "call-1")
    # The caller hears an apology, never silence, and the agent hangs up after it.
    assert caller.agent_lines() == [profile.messages.apology]
    await wait_until(caller.hung_up, 5, what="the hang-up")
