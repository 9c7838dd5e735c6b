"""Outgoing audio for simulated callers, and the measurements tests make on what they hear.

Every track sends 20 ms frames of 48 kHz mono s16 paced in real time, as a microphone would:

* ``ToneTrack``: a sine; ``burst_s``/``gap_s`` make it beep (latency probes note the onsets);
* ``WavTrack``: a sound file, once, then silence;
* ``CallerVoice``: silence until ``play``/``queue`` gives it speech, so a scripted caller
  can answer each of the agent's replies on cue.

``rms`` and ``dominant_frequency`` measure s16 mono PCM.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections import deque

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler

__all__ = [
    "FRAME_SAMPLES",
    "RATE",
    "CallerVoice",
    "PacedTrack",
    "ToneTrack",
    "WavTrack",
    "dominant_frequency",
    "rms",
    "to_rate",
]

#: What every track sends: 48 kHz (Opus's rate), 20 ms a frame.
RATE = 48000
FRAME_SAMPLES = RATE // 50
FRAME_BYTES = FRAME_SAMPLES * 2
_TIME_BASE = fractions.Fraction(1, RATE)


def rms(pcm: bytes) -> float:
    """The root mean square of s16 ``pcm`` (0 for none)."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def dominant_frequency(pcm: bytes, rate: int) -> float:
    """The strongest frequency in s16 mono ``pcm`` (Hann window, FFT peak)."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    if samples.size < 64:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum)) * rate / samples.size


def to_rate(pcm: bytes, sample_rate: int, rate: int = RATE) -> bytes:
    """s16 mono ``pcm`` at ``rate``, with FFmpeg's band-limited resampler (what the gateway
    uses), so the far end receives nearly the audio a source at ``rate`` would give."""
    if sample_rate == rate or not pcm:
        return pcm
    resampler = AudioResampler(format="s16", layout="mono", rate=rate)
    frame = AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm[: len(pcm) // 2 * 2])
    frame.sample_rate = sample_rate
    frame.time_base = fractions.Fraction(1, sample_rate)
    frame.pts = 0
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(bytes(f.planes[0])[: f.samples * 2] for f in out)


class PacedTrack(MediaStreamTrack):
    """An audio track that sends ``next_pcm()`` every 20 ms of wall-clock time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None

    def next_pcm(self) -> bytes:
        """The next 20 ms (``FRAME_BYTES``) to send."""
        raise NotImplementedError

    def renewed(self) -> PacedTrack:
        """A live track like this one, for a new peer connection once this one has ended."""
        raise NotImplementedError

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(self.next_pcm())
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, _TIME_BASE
        return frame


class ToneTrack(PacedTrack):
    """A sine at ``frequency``; ``burst_s``/``gap_s`` make it beep (latency probes)."""

    def __init__(
        self,
        frequency: float = 440.0,
        *,
        amplitude: float = 0.3,
        burst_s: float = 0.0,
        gap_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self.burst_s, self.gap_s = burst_s, gap_s
        #: Monotonic times a burst began (as sent).
        self.onsets: list[float] = []

    def renewed(self) -> ToneTrack:
        return ToneTrack(
            self.frequency, amplitude=self.amplitude, burst_s=self.burst_s, gap_s=self.gap_s
        )

    def next_pcm(self) -> bytes:
        t = (self._pts + np.arange(FRAME_SAMPLES)) / RATE
        wave = self.amplitude * np.sin(2 * math.pi * self.frequency * t)
        if self.burst_s > 0:
            phase = self._pts / RATE % (self.burst_s + self.gap_s)
            if phase >= self.burst_s:
                wave[:] = 0
            elif phase < FRAME_SAMPLES / RATE:
                self.onsets.append(time.monotonic())
        return bytes((wave * 32767).astype(np.int16).tobytes())


class CallerVoice(PacedTrack):
    """A caller's microphone: silence, or the speech queued with ``play``, in real time."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[tuple[bytes, asyncio.Future[float]]] = deque()
        self._current: tuple[bytes, asyncio.Future[float]] | None = None

    @property
    def speaking(self) -> bool:
        return self._current is not None or bool(self._queue)

    def renewed(self) -> CallerVoice:
        return CallerVoice()

    def queue(self, pcm: bytes, sample_rate: int = RATE) -> asyncio.Future[float]:
        """Queue ``pcm``; the future resolves (to a monotonic time) when its last frame is out."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.append((to_rate(pcm, sample_rate), done))
        return done

    async def play(self, pcm: bytes, sample_rate: int = RATE) -> float:
        """Say ``pcm`` and return once all of it has been sent."""
        return await self.queue(pcm, sample_rate)

    def next_pcm(self) -> bytes:
        if self._current is None and self._queue:
            self._current = self._queue.popleft()
        if self._current is None:
            return bytes(FRAME_BYTES)
        pcm, done = self._current
        chunk, rest = pcm[:FRAME_BYTES], pcm[FRAME_BYTES:]
        if rest:
            self._current = (rest, done)
        else:
            self._current = None
            if not done.done():
                done.set_result(time.monotonic() + 0.02)
        return chunk.ljust(FRAME_BYTES, b"\0")

    def stop(self) -> None:
        # Nobody waits forever for speech that will never be sent.
        for _, done in [*([self._current] if self._current else []), *self._queue]:
            if not done.done():
                done.cancel()
        self._current = None
        self._queue.clear()
        super().stop()


class WavTrack(PacedTrack):
    """A sound file (any format FFmpeg reads), played once from the first frame, then silence."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._pcm = _decode(path)
        self._offset = 0

    def renewed(self) -> WavTrack:
        return WavTrack(self.path)

    def next_pcm(self) -> bytes:
        chunk = self._pcm[self._offset : self._offset + FRAME_BYTES]
        self._offset += len(chunk)
        return chunk.ljust(FRAME_BYTES, b"\0")


def _decode(path: str) -> bytes:
    resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
    out: list[bytes] = []
    with av.open(path) as container:
        for frame in container.decode(audio=0):
            out.extend(bytes(f.planes[0])[: f.samples * 2] for f in resampler.resample(frame))
    out.extend(bytes(f.planes[0])[: f.samples * 2] for f in resampler.resample(None))
    return b"".join(out)
