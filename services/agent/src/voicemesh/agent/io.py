"""The agent's media seam: all a ``CallSession`` hears, says and tells the rest of the mesh.

``CallIO`` follows livekit/agents ``voice/io.py``: caller frames in (``frames``); ``play`` a
voice, paced in real time, finishing with how far the caller heard it and whether ``clear``
stopped it (a barge-in); ``emit`` the call's transcript segments, control messages and
hand-off. ``NatsCallIO`` carries a call over NATS; the test kit's ``MemoryCallIO`` keeps one
in memory, so turn-taking is unit-tested without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.audio import AudioFrame, AudioFrameError, decode_frame, encode_frame
from voicemesh.common.contracts.events import CallHandedOff, ControlMessage, TranscriptSegment
from voicemesh.common.runtime.publisher import JetStreamPublisher

__all__ = [
    "FRAME_S",
    "PLAYBACK_LEAD_S",
    "CallIO",
    "CallOutput",
    "NatsCallIO",
    "PacedOutput",
    "PlaybackFinished",
]

log = logging.getLogger(__name__)

FRAME_S = 0.02
#: Frames are sent this far ahead of real time so scheduling jitter never starves the
#: gateway's jitter buffer; small enough that a barge-in still cuts audio at once.
PLAYBACK_LEAD_S = 0.06
MAX_QUEUED_FRAMES = 500

#: What a session tells the rest of the mesh about its call.
CallOutput: TypeAlias = TranscriptSegment | ControlMessage | CallHandedOff


@dataclass(frozen=True)
class PlaybackFinished:
    """How one ``play`` ended."""

    position_s: float  # how much of the voice the caller has heard
    interrupted: bool  # ``clear`` stopped it
    first_frame_at: float = 0.0  # monotonic time its first frame went out (0.0: none did)


class CallIO(Protocol):
    """One call's transport, as its session sees it."""

    async def open(self) -> None:
        """Start receiving the caller's audio."""

    def frames(self) -> AsyncIterator[AudioFrame]:
        """The caller's 20 ms frames as they arrive (malformed ones already dropped)."""
        ...

    async def play(self, voice: AsyncIterable[bytes], sample_rate: int) -> PlaybackFinished:
        """Play s16le mono ``voice`` as it arrives, in real time; return once the caller has
        heard its end or ``clear`` stopped it. A failing ``voice`` raises its error."""
        ...

    def clear(self) -> bool:
        """Stop the playback at once (the caller spoke over it); False when none was on."""
        ...

    async def emit(self, event: CallOutput) -> None:
        """Send one of the call's events on its way; raises when it could not."""

    async def close(self) -> None:
        """Stop receiving; calling it twice is harmless."""


@dataclass
class _Position:
    frames: int = 0
    first_frame_at: float = 0.0

    def heard_s(self) -> float:
        """About how much the caller has heard: frames sent, but not ahead of the clock."""
        if not self.first_frame_at:
            return 0.0
        return min(self.frames * FRAME_S, time.monotonic() - self.first_frame_at)


class PacedOutput:
    """``play`` and ``clear`` for a transport that takes 20 ms frames: subclasses say how a
    frame is sent (``_send``)."""

    def __init__(self) -> None:
        self._playing: asyncio.Task[None] | None = None
        self._seq = 0

    async def _send(self, frame: AudioFrame) -> None:
        raise NotImplementedError

    async def play(self, voice: AsyncIterable[bytes], sample_rate: int) -> PlaybackFinished:
        position = _Position()
        pump = asyncio.create_task(self._pump(voice, sample_rate, position), name="agent-play")
        self._playing = pump
        try:
            await asyncio.wait({pump})
        finally:
            self._playing = None
            if not pump.done():  # the session is stopping
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        interrupted = pump.cancelled()
        if not interrupted and (failure := pump.exception()) is not None:
            raise failure
        return PlaybackFinished(position.heard_s(), interrupted, position.first_frame_at)

    def clear(self) -> bool:
        playing = self._playing
        if playing is None or playing.done():
            return False
        playing.cancel()
        return True

    async def _pump(self, voice: AsyncIterable[bytes], rate: int, position: _Position) -> None:
        """Send ``voice`` as 20 ms frames paced in real time (a little ahead), as it arrives;
        a voice slower than real time restarts the clock, never bursts."""
        step = rate // 50 * 2
        pending = bytearray()
        t0, index = time.monotonic(), 0

        async def send(pcm: bytes) -> None:
            nonlocal t0, index
            now = time.monotonic()
            if t0 + index * FRAME_S < now - FRAME_S:  # the voice fell behind: start afresh
                t0 = now - index * FRAME_S
            delay = t0 + index * FRAME_S - PLAYBACK_LEAD_S - now
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send(AudioFrame.now(self._seq, pcm, rate))
            self._seq += 1
            if position.frames == 0:
                position.first_frame_at = time.monotonic()
            index += 1
            position.frames += 1

        try:
            async for chunk in voice:
                pending += chunk
                whole = len(pending) - len(pending) % step
                for offset in range(0, whole, step):
                    await send(bytes(pending[offset : offset + step]))
                del pending[:whole]
            if pending:
                await send(bytes(pending) + bytes(step - len(pending)))
            # Playing until the last frame has been heard, not merely sent.
            remaining = t0 + index * FRAME_S - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
        finally:
            if isinstance(voice, AsyncGenerator):
                await voice.aclose()  # a barge-in: the provider stops speaking


class NatsCallIO(PacedOutput):
    """A call over NATS: ``audio.in``/``audio.out`` frames and control on core NATS,
    transcript segments and the hand-off through JetStream."""

    def __init__(self, nc: Client, events: JetStreamPublisher, tenant: str, call_id: str) -> None:
        super().__init__()
        self._nc = nc
        self._events = events
        self._tenant = tenant
        self._call_id = call_id
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self._sub: Subscription | None = None

    async def open(self) -> None:
        self._sub = await self._nc.subscribe(
            subjects.audio_in(self._tenant, self._call_id), cb=self._on_audio
        )

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_audio(self, msg: Msg) -> None:
        try:
            self._queue.put_nowait(msg.data)
        except asyncio.QueueFull:
            pass  # the session fell behind: drop the newest rather than grow without bound

    async def frames(self) -> AsyncIterator[AudioFrame]:
        while True:
            data = await self._queue.get()
            try:
                frame = decode_frame(data)
            except AudioFrameError:
                continue
            yield frame

    async def _send(self, frame: AudioFrame) -> None:
        await self._nc.publish(subjects.audio_out(self._tenant, self._call_id), encode_frame(frame))

    async def emit(self, event: CallOutput) -> None:
        tenant, call_id = self._tenant, self._call_id
        if isinstance(event, ControlMessage):
            subject = subjects.call_control(tenant, call_id)
            await self._nc.publish(subject, event.model_dump_json().encode())
        elif isinstance(event, TranscriptSegment):
            await self._events.publish(event, subjects.call_transcript(tenant, call_id))
        else:
            await self._events.publish(event, subjects.call_lifecycle(tenant, call_id))
