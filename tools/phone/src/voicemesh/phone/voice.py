"""The simulated caller's voice: eSpeak NG speech and a microphone track that says it on cue.

``CallerVoice`` is the phone's outgoing audio track: silence until ``say``/``play`` queues
speech, then that speech, 20 ms frames at 48 kHz paced in real time, so a test or
``voicemesh call`` can answer each of the agent's replies as a person would.
``synthesize`` turns a line of text into PCM with the process's eSpeak NG engine
(``voicemesh.common.runtime.speech``: the library ships in the ``espeakng-loader`` wheel).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler

from voicemesh.common.runtime.speech import resample, speak

__all__ = ["VOICE_RATE", "CallerVoice", "resample", "synthesize"]

#: The rate the track sends at (what Opus runs at; the gateway decodes to 16 kHz for the agent).
VOICE_RATE = 48000
_SAMPLES = VOICE_RATE // 50  # 20 ms


def synthesize(
    text: str, sample_rate: int = VOICE_RATE, *, voice: str = "en-us", words_per_minute: int = 170
) -> bytes:
    """``text`` spoken by eSpeak NG, s16le mono PCM at ``sample_rate`` (blocking, ~ms)."""
    return speak(text, sample_rate, voice=voice, rate=words_per_minute)


def _to_voice_rate(pcm: bytes, sample_rate: int) -> bytes:
    """FFmpeg's band-limited resampler (what the gateway uses the other way), so the agent
    receives nearly the audio it would get from a 16 kHz source directly."""
    if sample_rate == VOICE_RATE or not pcm:
        return pcm
    resampler = AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
    frame = AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm[: len(pcm) // 2 * 2])
    frame.sample_rate = sample_rate
    frame.time_base = fractions.Fraction(1, sample_rate)
    frame.pts = 0
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(bytes(f.planes[0])[: f.samples * 2] for f in out)


class CallerVoice(MediaStreamTrack):
    """The phone's microphone: silence, or the speech queued with ``play``, in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[tuple[bytes, asyncio.Future[float]]] = deque()
        self._current: tuple[bytes, asyncio.Future[float]] | None = None
        self._pts = 0
        self._start: float | None = None

    @property
    def speaking(self) -> bool:
        return self._current is not None or bool(self._queue)

    def queue(self, pcm: bytes, sample_rate: int = VOICE_RATE) -> asyncio.Future[float]:
        """Queue ``pcm``; the future resolves (to a monotonic time) when its last frame is out."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.append((_to_voice_rate(pcm, sample_rate), done))
        return done

    async def play(self, pcm: bytes, sample_rate: int = VOICE_RATE) -> float:
        """Say ``pcm`` and return once all of it has been sent."""
        return await self.queue(pcm, sample_rate)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += _SAMPLES
            wait = self._start + self._pts / VOICE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        chunk = self._next_chunk()
        frame = AudioFrame(format="s16", layout="mono", samples=_SAMPLES)
        frame.planes[0].update(chunk)
        frame.sample_rate, frame.pts = VOICE_RATE, self._pts
        frame.time_base = fractions.Fraction(1, VOICE_RATE)
        return frame

    def _next_chunk(self) -> bytes:
        size = _SAMPLES * 2
        if self._current is None and self._queue:
            self._current = self._queue.popleft()
        if self._current is None:
            return bytes(size)
        pcm, done = self._current
        chunk, rest = pcm[:size], pcm[size:]
        if rest:
            self._current = (rest, done)
        else:
            self._current = None
            if not done.done():
                done.set_result(time.monotonic() + 0.02)
        return chunk.ljust(size, b"\0")

    def stop(self) -> None:
        # Nobody waits forever for speech that will never be sent.
        for _, done in [*([self._current] if self._current else []), *self._queue]:
            if not done.done():
                done.cancel()
        self._current = None
        self._queue.clear()
        super().stop()
