"""One call's conversation: caller audio in, turns, dialog with tools, agent audio out.

``CallSession`` speaks only to its ``CallIO`` (``voicemesh.agent.io``): over NATS in the
service, in memory in unit tests. It owns three tasks (audio, responder, silence watchdog);
``stop()`` cancels and awaits them all. Guarantees, from what users of other voice-agent
frameworks trip over: barge-in needs ``barge_in_ms`` of voiced audio (a cough does not
interrupt); after an interruption the caller's turn is always answered; a provider that
fails or hangs yields a spoken apology and a hand-off within ``provider_timeout_s``, never
silence. Transcript text never goes into logs or span attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry.trace import Tracer

from voicemesh.agent.io import CallIO
from voicemesh.agent.providers.base import (
    CallContext,
    Conversation,
    HearsInterruptions,
    PartialTranscriber,
    Provider,
    Reply,
    Synthesizer,
    Transcriber,
    TurnJudge,
)
from voicemesh.agent.screening import RepeatGuard, screen
from voicemesh.agent.speaking import ReplyPlayer, Transcript, TurnTiming
from voicemesh.agent.speech import IN_RATE, resample
from voicemesh.agent.turns import (
    CallerTurn,
    Greeting,
    SilenceGoodbye,
    SilencePrompt,
    Turn,
    TurnDetector,
    TurnSignal,
)
from voicemesh.common.contracts.events import (
    CallHandedOff,
    ControlCommand,
    ControlMessage,
    HandoffReason,
    Speaker,
)

__all__ = ["CallSession", "TurnTiming"]

log = logging.getLogger(__name__)

#: How often the silence watchdog looks at the call.
WATCH_EVERY_S = 0.2


@dataclass
class _State:
    last_activity: float = field(default_factory=time.monotonic)
    prompted: bool = False
    busy: int = 0


class CallSession:
    """The agent's side of one call."""

    def __init__(
        self,
        *,
        io: CallIO,
        context: CallContext,
        provider: Provider,
        fallback: Synthesizer,
        tracer: Tracer,
        on_finished: Callable[[str], Awaitable[None]],
        provider_timeout_s: float = 8.0,
        source: str = "agent",
    ) -> None:
        self._io = io
        self.context = context
        self._profile = context.profile
        self._provider = provider
        self._tracer = tracer
        self._on_finished = on_finished
        self._provider_timeout = provider_timeout_s
        self._source = source
        self._tenant = context.tenant.id
        self.call_id = context.call_id
        self._transcriber: Transcriber = provider.transcriber(context)
        self._conversation: Conversation = provider.conversation(context)
        self._transcript = Transcript(io, self._tenant, self.call_id, source)
        self._player = ReplyPlayer(
            io, self._transcript, provider.synthesizer(context), fallback, provider_timeout_s
        )
        self._detector = TurnDetector(self._profile.turn)
        self._repeats = RepeatGuard(context)
        self._turns: asyncio.Queue[Turn] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._state = _State()
        self._finished = False
        self._stopped = False
        self._utterance_started = 0.0
        self._last_voiced_at = 0.0
        self.timings: list[TurnTiming] = []
        self.interrupts = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._transcriber.open()
        await self._io.open()
        self._tasks = [
            asyncio.create_task(self._audio_loop(), name=f"agent-audio-{self.call_id}"),
            asyncio.create_task(self._respond_loop(), name=f"agent-respond-{self.call_id}"),
            asyncio.create_task(self._silence_watchdog(), name=f"agent-silence-{self.call_id}"),
        ]
        await self._turns.put(Greeting())

    async def stop(self) -> None:
        """Cancel every task and let the recogniser go; calling it twice is harmless."""
        if self._stopped:
            return
        self._stopped = True
        await self._io.close()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._transcriber.close()

    # -- caller audio ------------------------------------------------------------------------

    async def _audio_loop(self) -> None:
        async for frame in self._io.frames():
            pcm = frame.pcm
            if frame.sample_rate != IN_RATE:
                pcm = resample(pcm, frame.sample_rate, IN_RATE)
            in_speech_before = self._detector.in_speech
            for event in self._detector.feed(pcm, agent_speaking=self._player.speaking):
                if event.signal is TurnSignal.SPEECH_STARTED:
                    self._state.last_activity = time.monotonic()
                    self._state.prompted = False
                    self._utterance_started = self._transcript.now()
                    self._transcriber.start_utterance()
                    for early in event.frames:
                        self._transcriber.feed(early)
                elif event.signal is TurnSignal.BARGE_IN:
                    await self._interrupt()
                elif event.signal is TurnSignal.TURN_ENDED:
                    await self._end_turn(self._profile.turn.end_of_turn_ms)
                elif event.signal is TurnSignal.PAUSED and self._heard_whole_answer():
                    ending = self._detector.end_turn()
                    if ending.signal is TurnSignal.TURN_ENDED:
                        await self._end_turn(self._detector.silence_ms)
                elif event.signal is TurnSignal.DISCARDED:
                    await self._transcriber.finish_utterance()
            if self._detector.in_speech:
                if in_speech_before:
                    self._transcriber.feed(pcm)
                if self._detector.is_speech(pcm):
                    self._last_voiced_at = time.monotonic()

    async def _end_turn(self, waited_ms: float) -> None:
        ended = time.monotonic()
        speech_end = self._last_voiced_at or ended
        text = await self._transcriber.finish_utterance()
        stt_ms = (time.monotonic() - ended) * 1000
        self._state.last_activity = time.monotonic()
        await self._turns.put(CallerTurn(text, speech_end, stt_ms, waited_ms))

    def _heard_whole_answer(self) -> bool:
        """At a short pause: is what the recogniser has so far already a whole answer to
        the agent's question? Then the turn ends now rather than after the full wait."""
        transcriber, conversation = self._transcriber, self._conversation
        if self._player.speaking or self._state.busy:
            return False
        if not isinstance(transcriber, PartialTranscriber) or not isinstance(
            conversation, TurnJudge
        ):
            return False
        text = transcriber.partial()
        return text is not None and conversation.is_complete(text)

    async def _interrupt(self) -> None:
        if not self._io.clear():
            return  # the agent had just finished
        self.interrupts += 1
        await self._control(ControlCommand.INTERRUPT)

    # -- turns -------------------------------------------------------------------------------

    async def _respond_loop(self) -> None:
        while True:
            turn = await self._turns.get()
            self._state.busy += 1
            try:
                if isinstance(turn, Greeting):
                    await self._greet()
                elif isinstance(turn, CallerTurn):
                    await self._answer(turn)
                elif isinstance(turn, SilencePrompt):
                    await self._say(Reply(self._profile.messages.still_there), TurnTiming())
                else:
                    goodbye = Reply(self._profile.messages.silence_goodbye, hangup=True)
                    await self._say(goodbye, TurnTiming())
            finally:
                self._state.busy -= 1
                self._state.last_activity = time.monotonic()
            if self._finished:
                return

    async def _greet(self) -> None:
        try:
            reply = await asyncio.wait_for(
                self._conversation.greeting(), timeout=self._provider_timeout
            )
        except Exception as exc:
            log.warning("greeting failed (%s); apologising", type(exc).__name__)
            reply = self._apology()
        await self._say(reply, TurnTiming())
        self._repeats.said(reply.text)

    async def _answer(self, turn: CallerTurn) -> None:
        timing = TurnTiming(
            stt_ms=turn.stt_ms,
            speech_ended_at=turn.speech_ended_at,
            end_of_turn_wait_ms=turn.end_of_turn_wait_ms,
        )
        await self._transcript.write(Speaker.CALLER, turn.text, self._utterance_started)
        with self._tracer.start_as_current_span(
            "agent.turn",
            attributes={
                "tenant": self._tenant,
                "vertical": self._profile.vertical,
                "agent.provider": self._provider.name,
            },
        ) as span:
            started = time.monotonic()
            safety = screen(self._profile, turn.text)
            if safety is not None:
                reply = safety  # before the dialog, whatever the provider
            else:
                try:
                    reply = await asyncio.wait_for(
                        self._conversation.respond(turn.text), timeout=self._provider_timeout
                    )
                    reply = await self._repeats.vet(reply)
                except Exception as exc:
                    log.warning("dialog failed (%s); apologising", type(exc).__name__)
                    span.set_attribute("agent.degraded", True)
                    reply = self._apology()
            timing.dialog_ms = (time.monotonic() - started) * 1000
            if reply.intent:
                span.set_attribute("agent.intent", reply.intent)
            await self._say(reply, timing)
            self._repeats.said(reply.text)
            if self._repeats.looped and not self._finished:
                await self._say(await self._repeats.hand_off(), TurnTiming())
            span.set_attribute("agent.stt_ms", timing.stt_ms)
            span.set_attribute("agent.dialog_ms", timing.dialog_ms)
            span.set_attribute("agent.tts_ms", timing.tts_ms)
        self.timings.append(timing)

    def _apology(self) -> Reply:
        return Reply(
            self._profile.messages.apology, hangup=True, handoff=HandoffReason.PROVIDER_FAILURE
        )

    async def _say(self, reply: Reply, timing: TurnTiming) -> None:
        if reply.handoff is not None:
            await self._hand_off(reply.handoff)
        spoken = await self._player.play(reply, timing)
        if spoken.interrupted and isinstance(self._conversation, HearsInterruptions):
            # Barged in on: the conversation must not assume the caller heard it all.
            try:
                await self._conversation.interrupted(reply.text, spoken.heard, spoken.played_ms)
            except Exception as exc:  # the caller's turn matters more than the history
                log.warning("could not record the interruption (%s)", type(exc).__name__)
        if spoken.failure is not None:
            log.warning("the agent's voice failed mid-reply (%s)", type(spoken.failure).__name__)
            if reply.speech is not None or reply.sentences is not None:
                # The provider broke off: apologise, never silence.
                await self._say(self._apology(), TurnTiming())
                return
        if reply.hangup:
            await self._hang_up()

    # -- silence -----------------------------------------------------------------------------

    async def _silence_watchdog(self) -> None:
        timing = self._profile.turn
        while not self._finished:
            await asyncio.sleep(WATCH_EVERY_S)
            state = self._state
            if self._player.speaking or state.busy or self._detector.in_speech:
                continue
            idle = time.monotonic() - state.last_activity
            if not state.prompted and idle >= timing.silence_prompt_s:
                state.prompted = True
                await self._turns.put(SilencePrompt())
                state.last_activity = time.monotonic()
            elif state.prompted and idle >= timing.silence_hangup_s:
                await self._turns.put(SilenceGoodbye())
                return

    # -- what the rest of the mesh hears -----------------------------------------------------

    async def _hang_up(self) -> None:
        await self._control(ControlCommand.HANGUP)
        self._finished = True
        await self._on_finished(self.call_id)

    async def _control(self, command: ControlCommand) -> None:
        await self._io.emit(
            ControlMessage(
                tenant=self._tenant, call_id=self.call_id, source=self._source, command=command
            )
        )

    async def _hand_off(self, reason: HandoffReason) -> None:
        log.info("handing call off to a person (%s)", reason.value)
        event = CallHandedOff(
            tenant=self._tenant, call_id=self.call_id, source=self._source, reason=reason
        )
        try:
            await self._io.emit(event)
        except Exception as exc:
            log.warning("could not publish the hand-off: %s", type(exc).__name__)
