"""The caller's end of an agent's call, over real NATS or in memory, for tests and benches.

``SimulatedCaller`` is the gateway's side of a call over NATS: it sends 20 ms frames of
16 kHz PCM on ``audio.in`` in real time (eSpeak speech for scripted lines, silence
otherwise) and records the agent's ``audio.out`` frames, control messages and transcript
segments. ``MemoryCallIO`` is the agent's ``CallIO`` kept in memory: a ``CallSession`` on it
talks to the same caller (``MemoryCaller``), with no server, so turn-taking is unit-tested
in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voicemesh.agent.io import CallOutput, PacedOutput
from voicemesh.agent.profiles import Profile
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.audio import AudioFrame, decode_frame, encode_frame, frame_bytes
from voicemesh.common.contracts.events import (
    CallConnected,
    CallHandedOff,
    ControlMessage,
    Speaker,
    TranscriptSegment,
    decode_event,
)
from voicemesh.common.runtime.speech import espeak, resample
from voicemesh.testkit.fixtures import wait_until
from voicemesh.testkit.mesh import publish_event

__all__ = [
    "AgentAudio",
    "CallerEnd",
    "MemoryCallIO",
    "MemoryCaller",
    "SimulatedCaller",
    "connected_call",
    "cough",
    "decode_agent_audio",
    "follow_script",
]

RATE = 16000
FRAME_BYTES = frame_bytes(RATE)  # 20 ms at 16 kHz


def cough(duration_ms: int = 160, seed: int = 7) -> bytes:
    """A cough-like burst: loud broadband noise with a fast decay, 16 kHz PCM."""
    rng = np.random.default_rng(seed)
    n = 16 * duration_ms
    envelope = np.exp(-np.linspace(0, 5, n))
    noise = rng.normal(0, 1, n) * envelope * 12000
    return bytes(np.clip(noise, -32768, 32767).astype(np.int16).tobytes())


@dataclass
class AgentAudio:
    received_at: float
    pcm: bytes
    sample_rate: int


class CallerEnd:
    """The caller's end of one call, whatever carries it: a voice that sends 20 ms frames in
    real time (silence between lines), and a record of what the agent said and did.

    A subclass says how a frame reaches the agent (``_send_frame``) and feeds what comes
    back to ``heard_audio`` and ``heard_event``.
    """

    voice_rate = 170

    def __init__(self) -> None:
        self.audio: list[AgentAudio] = []
        self.controls: list[ControlMessage] = []
        self.segments: list[TranscriptSegment] = []
        #: partial segments (when they arrived, what they said) of lines still being spoken
        self.captions: list[tuple[float, TranscriptSegment]] = []
        self.handoffs: list[CallHandedOff] = []
        self.speech_started_at: list[float] = []
        self.speech_ended_at: list[float] = []
        self._outbox: asyncio.Queue[tuple[bytes, asyncio.Future[float]]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._seq = 0
        self._agent_line_at: list[float] = []  # when each agent segment arrived (monotonic)

    async def _send_frame(self, frame: AudioFrame) -> None:
        raise NotImplementedError

    def start_voice(self) -> None:
        self._sender = asyncio.create_task(self._send_loop(), name="caller-voice")

    async def stop_voice(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    # -- what the agent does -----------------------------------------------------------------

    def heard_audio(self, frame: AudioFrame) -> None:
        self.audio.append(AgentAudio(time.monotonic(), frame.pcm, frame.sample_rate))

    def heard_event(self, event: CallOutput) -> None:
        if isinstance(event, ControlMessage):
            self.controls.append(event)
        elif isinstance(event, CallHandedOff):
            self.handoffs.append(event)
        elif not event.final:  # a live caption of a line still being spoken
            self.captions.append((time.monotonic(), event))
        else:
            self.segments.append(event)
            if event.speaker is Speaker.AGENT:
                # A line is published as its audio starts, or, streamed, once it has been
                # spoken: then its segment spans the time it took to say.
                spoken_s = event.end_s - event.start_s
                self._agent_line_at.append(time.monotonic() - spoken_s)

    def hung_up(self) -> bool:
        return any(c.command.value == "hangup" for c in self.controls)

    def interrupted(self) -> bool:
        return any(c.command.value == "interrupt" for c in self.controls)

    # -- the caller's voice ------------------------------------------------------------------

    async def _send_loop(self) -> None:
        silence = bytes(FRAME_BYTES)
        pending: bytes = b""
        done: asyncio.Future[float] | None = None
        t0 = time.monotonic()
        index = 0
        while True:
            if not pending and not self._outbox.empty():
                pending, done = self._outbox.get_nowait()
            if pending:
                chunk, pending = pending[:FRAME_BYTES], pending[FRAME_BYTES:]
                chunk = chunk.ljust(FRAME_BYTES, b"\0")
            else:
                chunk = silence
            await self._send_frame(AudioFrame.now(self._seq, chunk, RATE))
            self._seq += 1
            if not pending and done is not None:
                if not done.done():
                    done.set_result(time.monotonic() + 0.02)
                done = None
            index += 1
            delay = t0 + index * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                # The loop was held up: go on in real time rather than burst to catch up.
                t0, index = time.monotonic(), 0

    async def play(self, pcm: bytes) -> float:
        """Send ``pcm`` (16 kHz) as the caller's voice; returns when its last frame is out."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.speech_started_at.append(time.monotonic())
        await self._outbox.put((pcm, done))
        ended = await done
        self.speech_ended_at.append(ended)
        return ended

    async def say(self, text: str) -> float:
        pcm = await espeak().synthesize(text, RATE, rate=self.voice_rate)
        return await self.play(pcm)

    # -- reading the record ------------------------------------------------------------------

    def agent_lines(self) -> list[str]:
        return [s.text for s in self.segments if s.speaker is Speaker.AGENT]

    def caller_lines(self) -> list[str]:
        return [s.text for s in self.segments if s.speaker is Speaker.CALLER]

    async def wait_for_agent_line(self, count: int, timeout: float = 15.0) -> str:
        """Wait until the agent has said ``count`` lines and finished speaking the last.

        The agent publishes a line's segment as its audio starts (a streamed line, once
        spoken), so this waits for audio from then on, then for a pause in it: a caller who
        answered at the first hiccup of a busy agent's audio would talk over the rest.
        """
        deadline = time.monotonic() + timeout
        while len(self._agent_line_at) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agent said {self.agent_lines()}, expected {count} lines")
            await asyncio.sleep(0.05)
        line_at = self._agent_line_at[count - 1]
        while not self.audio or self.audio[-1].received_at < line_at:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no audio for the agent's line {self.agent_lines()[-1]!r}")
            await asyncio.sleep(0.05)
        await self.wait_quiet(timeout=max(0.1, deadline - time.monotonic()))
        return self.agent_lines()[count - 1]

    async def wait_quiet(self, quiet_s: float = 0.6, timeout: float = 15.0) -> None:
        """Until no agent audio arrived for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.audio[-1].received_at if self.audio else 0.0
            if self.audio and time.monotonic() - last >= quiet_s:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the agent kept talking")
            await asyncio.sleep(0.05)

    def first_audio_after(self, moment: float) -> float | None:
        return next((a.received_at for a in self.audio if a.received_at > moment), None)

    def audio_between(self, start: float, end: float) -> bytes:
        chunks = [
            resample(a.pcm, a.sample_rate, RATE)
            for a in self.audio
            if start <= a.received_at <= end
        ]
        return b"".join(chunks)


class SimulatedCaller(CallerEnd):
    """The caller's end of one call, talking to the agent over NATS (the gateway's part)."""

    def __init__(self, nc: NatsClient, tenant: str, call_id: str) -> None:
        super().__init__()
        self.nc = nc
        self.tenant = tenant
        self.call_id = call_id
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        tenant, call_id = self.tenant, self.call_id
        self._subs = [
            await self.nc.subscribe(subjects.audio_out(tenant, call_id), cb=self._on_audio),
            await self.nc.subscribe(subjects.call_control(tenant, call_id), cb=self._on_control),
            await self.nc.subscribe(subjects.call_transcript(tenant, call_id), cb=self._on_segment),
            await self.nc.subscribe(
                subjects.call_lifecycle(tenant, call_id), cb=self._on_lifecycle
            ),
        ]
        self.start_voice()

    async def stop(self) -> None:
        await self.stop_voice()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _send_frame(self, frame: AudioFrame) -> None:
        await self.nc.publish(subjects.audio_in(self.tenant, self.call_id), encode_frame(frame))

    async def _on_audio(self, msg: Msg) -> None:
        self.heard_audio(decode_frame(msg.data))

    async def _on_control(self, msg: Msg) -> None:
        self.heard_event(ControlMessage.model_validate_json(msg.data))

    async def _on_segment(self, msg: Msg) -> None:
        self.heard_event(TranscriptSegment.model_validate_json(msg.data))

    async def _on_lifecycle(self, msg: Msg) -> None:
        event = decode_event(msg.data)
        if isinstance(event, CallHandedOff):
            self.heard_event(event)


@asynccontextmanager
async def connected_call(
    nc: NatsClient, tenant: str, call_id: str, vertical: str, *, phone: str | None = None
) -> AsyncIterator[SimulatedCaller]:
    """A call connected as the gateway connects it: the caller's end listening, then
    ``CallConnected`` on the call's lifecycle subject (with the number the tenant's backend
    vouched for, if any); the caller stops on the way out."""
    caller = SimulatedCaller(nc, tenant, call_id)
    await caller.start()
    try:
        connected = CallConnected(
            tenant=tenant, call_id=call_id, source="gateway", vertical=vertical, phone=phone
        )
        await publish_event(nc, connected, subjects.call_lifecycle(tenant, call_id))
        yield caller
    finally:
        await caller.stop()


class MemoryCaller(CallerEnd):
    """The caller's end of a ``MemoryCallIO``."""

    def __init__(self, inbound: asyncio.Queue[AudioFrame]) -> None:
        super().__init__()
        self._inbound = inbound

    async def _send_frame(self, frame: AudioFrame) -> None:
        self._inbound.put_nowait(frame)


class MemoryCallIO(PacedOutput):
    """A ``CallIO`` in memory: what the agent plays reaches ``caller`` frame by frame in
    real time, and what ``caller`` says reaches the agent's ``frames``; the caller's voice
    runs from ``open`` to ``close``, as a connected call's would."""

    def __init__(self) -> None:
        super().__init__()
        self._inbound: asyncio.Queue[AudioFrame] = asyncio.Queue()
        self.caller = MemoryCaller(self._inbound)

    async def open(self) -> None:
        self.caller.start_voice()

    async def close(self) -> None:
        await self.caller.stop_voice()

    async def frames(self) -> AsyncIterator[AudioFrame]:
        while True:
            yield await self._inbound.get()

    async def _send(self, frame: AudioFrame) -> None:
        self.caller.heard_audio(frame)

    async def emit(self, event: CallOutput) -> None:
        self.caller.heard_event(event)


async def follow_script(caller: CallerEnd, profile: Profile, *, timeout: float = 30.0) -> str:
    """Be the caller of ``profile``'s demo script: answer what the agent asks until it says
    its closing line or hangs up, then wait for the hang-up; returns the greeting.

    The recogniser sometimes mishears eSpeak; the agent then asks again, and the caller
    answers the question actually asked, as a person would.
    """
    script = profile.demo_script
    cues = [profile.greeting.lower()] + [s.expect.lower() for s in script]
    greeting = line = await caller.wait_for_agent_line(1, timeout=timeout)
    heard, step = 1, 0
    for _ in range(len(script) + 4):
        if cues[-1] in line.lower() or caller.hung_up():
            break
        matches = [i for i, cue in enumerate(cues[:-1]) if cue in line.lower()]
        step = matches[-1] if matches else step
        await caller.say(script[step].say)
        heard += 1
        line = await caller.wait_for_agent_line(heard, timeout=timeout)
    await wait_until(caller.hung_up, timeout, what="the agent's hang-up")
    return greeting


def decode_agent_audio(pcm: bytes, candidates: list[str]) -> str:
    """Which of ``candidates`` the agent's audio says, by recognising it against them all.

    The recogniser gets a grammar of exactly the candidate sentences (words it cannot
    pronounce are left out), so the answer says which sentence the audio holds.
    """
    from pocketsphinx import Decoder

    from voicemesh.agent.profiles import dictionary_words
    from voicemesh.agent.speech import DECODER_CONFIG, decode_blocking

    known = dictionary_words()
    cleaned: dict[str, str] = {}
    for sentence in candidates:
        words = [w for w in _words(sentence) if w in known]
        if words:
            cleaned[" ".join(words)] = sentence
    grammar = (
        "#JSGF V1.0; grammar check; public <s> = " + " | ".join(f"({c})" for c in cleaned) + ";"
    )
    decoder = Decoder(**DECODER_CONFIG)
    decoder.add_jsgf_string("check", grammar)
    decoder.activate_search("check")
    heard = decode_blocking(decoder, bytes(6400) + pcm + bytes(6400))
    return cleaned.get(heard, heard)


def _words(sentence: str) -> list[str]:
    cleaned = "".join(c if c.isalnum() or c in " '" else " " for c in sentence.lower())
    return cleaned.split()
