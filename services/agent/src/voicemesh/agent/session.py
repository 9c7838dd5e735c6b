"""One call's conversation: caller audio in, turns, dialog with tools, agent audio out.

``CallSession`` owns three tasks (audio, responder, silence watchdog) and one playback task
at a time; ``stop()`` cancels and awaits them all. Guarantees, from what users of other
voice-agent frameworks trip over: barge-in needs ``barge_in_ms`` of voiced audio (a cough
does not interrupt); after an interruption the caller's turn is always answered; a provider
that fails or hangs yields a spoken apology and a hand-off within ``provider_timeout_s``,
never silence. Transcript text never goes into logs or span attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import Tracer

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
from voicemesh.agent.speech import resample
from voicemesh.agent.turns import TurnDetector, TurnSignal
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.audio import AudioFrame, AudioFrameError, decode_frame, encode_frame
from voicemesh.common.contracts.events import (
    ControlCommand,
    ControlMessage,
    Speaker,
    ToolEvent,
    TranscriptSegment,
    new_event_id,
)
from voicemesh.common.runtime.publisher import JetStreamPublisher

__all__ = ["CallSession", "TurnTiming"]

log = logging.getLogger(__name__)

FRAME_S = 0.02
IN_RATE = 16000
#: Frames are sent this far ahead of real time so scheduling jitter never starves the
#: gateway's jitter buffer; small enough that a barge-in still cuts audio at once.
PLAYBACK_LEAD_S = 0.06
#: How often a streamed line's live caption is brought up to date.
CAPTION_EVERY_S = 0.25
MAX_QUEUED_FRAMES = 500
# Turns the watchdog queues; NUL never comes out of a recogniser.
_STILL_THERE = "\x00still_there"
_SILENCE_GOODBYE = "\x00goodbye"


@dataclass
class TurnTiming:
    """Where the time of one turn went (milliseconds), for spans and benchmarks."""

    end_of_turn_wait_ms: float = 0.0
    stt_ms: float = 0.0
    dialog_ms: float = 0.0
    tts_ms: float = 0.0
    first_frame_at: float = 0.0
    speech_ended_at: float = 0.0


@dataclass
class _State:
    speaking: bool = False
    last_activity: float = field(default_factory=time.monotonic)
    prompted: bool = False
    busy: int = 0


class CallSession:
    """The agent's side of one call."""

    def __init__(
        self,
        *,
        nc: NatsClient,
        events: JetStreamPublisher,
        context: CallContext,
        provider: Provider,
        fallback: Synthesizer,
        tracer: Tracer,
        on_finished: Callable[[str], Awaitable[None]],
        provider_timeout_s: float = 8.0,
        source: str = "agent",
    ) -> None:
        self._nc = nc
        self._events = events
        self.context = context
        self._profile = context.profile
        self._provider = provider
        self._fallback = fallback
        self._tracer = tracer
        self._on_finished = on_finished
        self._provider_timeout = provider_timeout_s
        self._source = source
        self._tenant = context.tenant.id
        self.call_id = context.call_id
        self._transcriber: Transcriber = provider.transcriber(context)
        self._synth: Synthesizer = provider.synthesizer(context)
        self._conversation: Conversation = provider.conversation(context)
        self._detector = TurnDetector(self._profile.turn)
        self._frames: asyncio.Queue[bytes] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self._turns: asyncio.Queue[tuple[str, float, float, float]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._playback: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None
        self._state = _State()
        self._started_at = time.monotonic()
        self._segments = {Speaker.CALLER: 0, Speaker.AGENT: 0}
        self._seq = 0
        self._finished = False
        self._stopped = False
        self._utterance_started = 0.0
        self._last_voiced_at = 0.0
        self.timings: list[TurnTiming] = []
        self.interrupts = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._transcriber.open()
        self._sub = await self._nc.subscribe(
            subjects.audio_in(self._tenant, self.call_id), cb=self._on_audio
        )
        self._tasks = [
            asyncio.create_task(self._audio_loop(), name=f"agent-audio-{self.call_id}"),
            asyncio.create_task(self._respond_loop(), name=f"agent-respond-{self.call_id}"),
            asyncio.create_task(self._silence_watchdog(), name=f"agent-silence-{self.call_id}"),
        ]
        await self._turns.put(("", 0.0, 0.0, 0.0))  # the empty turn is the greeting

    async def stop(self) -> None:
        """Cancel every task and let the recogniser go; calling it twice is harmless."""
        if self._stopped:
            return
        self._stopped = True
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        tasks = [*self._tasks, *([self._playback] if self._playback else [])]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._transcriber.close()

    # -- caller audio ------------------------------------------------------------------------

    async def _on_audio(self, msg: Msg) -> None:
        try:
            self._frames.put_nowait(msg.data)
        except asyncio.QueueFull:
            # The loop fell behind: drop the newest rather than grow without bound.
            pass

    async def _audio_loop(self) -> None:
        while True:
            data = await self._frames.get()
            try:
                frame = decode_frame(data)
            except AudioFrameError:
                continue
            pcm = frame.pcm
            if frame.sample_rate != IN_RATE:
                pcm = resample(pcm, frame.sample_rate, IN_RATE)
            in_speech_before = self._detector.in_speech
            for event in self._detector.feed(pcm, agent_speaking=self._state.speaking):
                if event.signal is TurnSignal.SPEECH_STARTED:
                    self._state.last_activity = time.monotonic()
                    self._state.prompted = False
                    self._utterance_started = self._now()
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
        await self._turns.put((text, speech_end, stt_ms, waited_ms))

    def _heard_whole_answer(self) -> bool:
        """At a short pause: is what the recogniser has so far already a whole answer to
        the agent's question? Then the turn ends now rather than after the full wait."""
        transcriber, conversation = self._transcriber, self._conversation
        if self._state.speaking or self._state.busy:
            return False
        if not isinstance(transcriber, PartialTranscriber) or not isinstance(
            conversation, TurnJudge
        ):
            return False
        text = transcriber.partial()
        return text is not None and conversation.is_complete(text)

    # -- turns -------------------------------------------------------------------------------

    async def _respond_loop(self) -> None:
        while True:
            text, speech_end, stt_ms, waited_ms = await self._turns.get()
            self._state.busy += 1
            try:
                if text == _STILL_THERE:
                    await self._say(Reply(self._profile.messages.still_there), TurnTiming())
                elif text == _SILENCE_GOODBYE:
                    await self._say(
                        Reply(self._profile.messages.silence_goodbye, hangup=True), TurnTiming()
                    )
                elif speech_end == 0.0:
                    await self._greet()
                else:
                    await self._answer(text, speech_end, stt_ms, waited_ms)
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

    async def _answer(self, text: str, speech_end: float, stt_ms: float, waited_ms: float) -> None:
        timing = TurnTiming(stt_ms=stt_ms, speech_ended_at=speech_end)
        timing.end_of_turn_wait_ms = waited_ms
        await self._publish_segment(Speaker.CALLER, text, self._utterance_started)
        with self._tracer.start_as_current_span(
            "agent.turn",
            attributes={
                "tenant": self._tenant,
                "vertical": self._profile.vertical,
                "agent.provider": self._provider.name,
            },
        ) as span:
            crisis = self._crisis(text)
            started = time.monotonic()
            if crisis:
                reply = Reply(self._profile.policies.crisis_message, handoff="crisis")
            else:
                try:
                    reply = await asyncio.wait_for(
                        self._conversation.respond(text), timeout=self._provider_timeout
                    )
                except Exception as exc:
                    log.warning("dialog failed (%s); apologising", type(exc).__name__)
                    span.set_attribute("agent.degraded", True)
                    reply = self._apology()
            timing.dialog_ms = (time.monotonic() - started) * 1000
            if reply.intent:
                span.set_attribute("agent.intent", reply.intent)
            await self._say(reply, timing)
            span.set_attribute("agent.stt_ms", timing.stt_ms)
            span.set_attribute("agent.dialog_ms", timing.dialog_ms)
            span.set_attribute("agent.tts_ms", timing.tts_ms)
        self.timings.append(timing)

    def _crisis(self, text: str) -> bool:
        words = " ".join(text.lower().split())
        return any(
            re.search(rf"\b{re.escape(w)}\b", words) for w in self._profile.policies.crisis_words
        )

    def _apology(self) -> Reply:
        return Reply(self._profile.messages.apology, hangup=True, handoff="provider_failure")

    # -- speaking ----------------------------------------------------------------------------

    async def _say(self, reply: Reply, timing: TurnTiming) -> None:
        if reply.handoff:
            await self._publish_handoff(reply.handoff)
        started = time.monotonic()
        played = _Played()
        streamed = reply.speech is not None or reply.sentences is not None
        voice: AsyncIterator[bytes]
        said_at = self._now()
        if reply.speech is not None:
            # Played as the provider speaks; its line is known once it has.
            voice, rate = reply.speech, reply.speech_rate
        elif reply.sentences is not None:
            voice, rate = self._voices(reply.sentences, played), self._synth.sample_rate
        else:
            pcm, rate = await self._synthesize(reply.text)
            timing.tts_ms = (time.monotonic() - started) * 1000
            await self._publish_segment(Speaker.AGENT, reply.text, self._now())
            voice = _whole(pcm)
        playback = self._playback = asyncio.create_task(self._play(voice, rate, timing, played))
        line = self._segment_id(Speaker.AGENT) if streamed else ""
        captions = (
            asyncio.create_task(self._caption(reply, played, line, said_at)) if line else None
        )
        await asyncio.wait({playback})
        self._playback = None
        failure = None if playback.cancelled() else playback.exception()
        if captions is not None:
            captions.cancel()
            await asyncio.gather(captions, return_exceptions=True)
            if played.first_chunk_at:
                timing.tts_ms = (played.first_chunk_at - started) * 1000
            if reply.text:
                await self._publish_segment(Speaker.AGENT, reply.text, said_at, segment_id=line)
        if playback.cancelled() and isinstance(self._conversation, HearsInterruptions):
            # Barged in on: the conversation must not assume the caller heard it all.
            total_s = played.received / 2 / rate
            played_s = min(played.seconds(), total_s)
            heard = heard_part(played.voiced(reply), played_s / total_s if total_s else 1.0)
            try:
                await self._conversation.interrupted(reply.text, heard, round(played_s * 1000))
            except Exception as exc:  # the caller's turn matters more than the history
                log.warning("could not record the interruption (%s)", type(exc).__name__)
        if failure is not None:
            log.warning("the agent's voice failed mid-reply (%s)", type(failure).__name__)
            if streamed:  # the provider broke off: apologise, never silence
                await self._say(self._apology(), TurnTiming())
                return
        if reply.hangup:
            await self._hang_up()

    async def _synthesize(self, text: str) -> tuple[bytes, int]:
        try:
            pcm = await asyncio.wait_for(
                self._synth.synthesize(text), timeout=self._provider_timeout
            )
            return pcm, self._synth.sample_rate
        except Exception as exc:
            # The provider's voice failed: say it with the embedded voice, never silence.
            log.warning("speech synthesis failed (%s); using the offline voice", type(exc).__name__)
            return await self._fallback.synthesize(text), self._fallback.sample_rate

    async def _caption(self, reply: Reply, played: _Played, line: str, said_at: float) -> None:
        """Live captions for a streamed line: while it plays, a partial segment whenever its
        text has grown (the voiced sentences, or the speech model's transcript so far)."""
        shown = ""
        while True:
            await asyncio.sleep(CAPTION_EVERY_S)
            text = played.voiced(reply)
            if text and text != shown:
                shown = text
                await self._publish_segment(
                    Speaker.AGENT, text, said_at, segment_id=line, final=False
                )

    async def _voices(
        self, sentences: AsyncGenerator[str, None], played: _Played
    ) -> AsyncGenerator[bytes, None]:
        """Each sentence's voice as the provider writes it: the next sentence is synthesized
        while this one plays, so there is no pause between them."""
        rate = self._synth.sample_rate
        voiced: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

        async def synthesize_all() -> None:
            try:
                async for sentence in sentences:
                    pcm, pcm_rate = await self._synthesize(sentence)
                    if pcm_rate != rate:  # the offline voice stood in
                        pcm = resample(pcm, pcm_rate, rate)
                    voiced.put_nowait((sentence, pcm))
            finally:
                voiced.put_nowait(None)

        writer = asyncio.create_task(synthesize_all())
        try:
            while (item := await voiced.get()) is not None:
                played.lines.append(item[0])
                yield item[1]
            await writer  # the provider's failure, if it broke off
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await sentences.aclose()

    async def _play(
        self, voice: AsyncIterator[bytes], rate: int, timing: TurnTiming, played: _Played
    ) -> None:
        """Send ``voice`` as 20 ms ``audio.out`` frames paced in real time (a little ahead),
        as it arrives; a voice slower than real time restarts the clock, never bursts."""
        subject = subjects.audio_out(self._tenant, self.call_id)
        step = rate // 50 * 2
        pending = bytearray()
        self._state.speaking = True
        t0, index = time.monotonic(), 0

        async def send(pcm: bytes) -> None:
            nonlocal t0, index
            now = time.monotonic()
            if t0 + index * FRAME_S < now - FRAME_S:  # the voice fell behind: start afresh
                t0 = now - index * FRAME_S
            delay = t0 + index * FRAME_S - PLAYBACK_LEAD_S - now
            if delay > 0:
                await asyncio.sleep(delay)
            frame = AudioFrame.now(self._seq, pcm, rate)
            self._seq += 1
            await self._nc.publish(subject, encode_frame(frame))
            if played.frames == 0:
                timing.first_frame_at = played.first_frame_at = time.monotonic()
            index += 1
            played.frames += 1

        try:
            async for chunk in voice:
                if not played.first_chunk_at:
                    played.first_chunk_at = time.monotonic()
                played.received += len(chunk)
                pending += chunk
                whole = len(pending) - len(pending) % step
                for offset in range(0, whole, step):
                    await send(bytes(pending[offset : offset + step]))
                del pending[:whole]
            if pending:
                await send(bytes(pending) + bytes(step - len(pending)))
            # Stay "speaking" until the last frame has been heard, not merely sent.
            remaining = t0 + index * FRAME_S - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
        finally:
            self._state.speaking = False
            self._state.last_activity = time.monotonic()
            if isinstance(voice, AsyncGenerator):
                await voice.aclose()  # a barge-in: the provider stops speaking

    async def _interrupt(self) -> None:
        playback = self._playback
        if playback is None or playback.done():
            return
        self.interrupts += 1
        playback.cancel()
        await self._control(ControlCommand.INTERRUPT)

    async def _hang_up(self) -> None:
        await self._control(ControlCommand.HANGUP)
        self._finished = True
        await self._on_finished(self.call_id)

    async def _control(self, command: ControlCommand) -> None:
        message = ControlMessage(
            tenant=self._tenant, call_id=self.call_id, source=self._source, command=command
        )
        await self._nc.publish(
            subjects.call_control(self._tenant, self.call_id), message.model_dump_json().encode()
        )

    # -- silence -----------------------------------------------------------------------------

    async def _silence_watchdog(self) -> None:
        timing = self._profile.turn
        while not self._finished:
            await asyncio.sleep(0.2)
            state = self._state
            if state.speaking or state.busy or self._detector.in_speech:
                continue
            idle = time.monotonic() - state.last_activity
            if not state.prompted and idle >= timing.silence_prompt_s:
                state.prompted = True
                await self._turns.put((_STILL_THERE, 0.0, 0.0, 0.0))
                state.last_activity = time.monotonic()
            elif state.prompted and idle >= timing.silence_hangup_s:
                await self._turns.put((_SILENCE_GOODBYE, 0.0, 0.0, 0.0))
                return

    # -- events ------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic() - self._started_at

    def _segment_id(self, speaker: Speaker) -> str:
        n = self._segments[speaker]
        self._segments[speaker] = n + 1
        return f"{self.call_id}:{speaker.value}:{n}"

    async def _publish_segment(
        self,
        speaker: Speaker,
        text: str,
        start_s: float,
        *,
        segment_id: str | None = None,
        final: bool = True,
    ) -> None:
        segment = TranscriptSegment(
            tenant=self._tenant,
            call_id=self.call_id,
            source=self._source,
            segment_id=segment_id or self._segment_id(speaker),
            speaker=speaker,
            text=text,
            start_s=max(0.0, start_s),
            end_s=max(start_s, self._now()),
            final=final,
        )
        try:
            await self._events.publish(
                segment, subjects.call_transcript(self._tenant, self.call_id)
            )
        except Exception as exc:
            log.warning("could not publish a transcript segment: %s", type(exc).__name__)

    async def _publish_handoff(self, reason: str) -> None:
        event = ToolEvent(
            tenant=self._tenant,
            call_id=self.call_id,
            source=self._source,
            service="agent",
            name=f"handoff_{reason}",
            request_id=new_event_id(),
            ok=True,
            duration_ms=0.0,
        )
        log.info("handing call off to a person (%s)", reason)
        try:
            await self._events.publish(event, subjects.event(self._tenant, "handoff"))
        except Exception as exc:
            log.warning("could not publish the hand-off: %s", type(exc).__name__)


@dataclass
class _Played:
    """How far the playback of one reply got."""

    received: int = 0  # bytes of voice received
    lines: list[str] = field(default_factory=list)  # sentences whose voice was received
    frames: int = 0  # 20 ms frames sent
    first_chunk_at: float = 0.0
    first_frame_at: float = 0.0

    def voiced(self, reply: Reply) -> str:
        """The text whose voice has come so far: the sentences voiced, or a speech model's
        transcript so far."""
        return " ".join(self.lines) if reply.sentences is not None else reply.text

    def seconds(self) -> float:
        """About how much the caller has heard: frames sent, but not ahead of the clock."""
        if not self.first_frame_at:
            return 0.0
        return min(self.frames * FRAME_S, time.monotonic() - self.first_frame_at)


async def _whole(pcm: bytes) -> AsyncIterator[bytes]:
    yield pcm


def heard_part(text: str, fraction: float) -> str:
    """The words of ``text`` a caller heard when playback stopped ``fraction`` of the way
    through (speech runs at a roughly even pace of words)."""
    words = text.split()
    return " ".join(words[: max(0, min(len(words), round(len(words) * fraction)))])
