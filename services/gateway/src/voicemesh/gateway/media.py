"""Call audio between aiortc and NATS: caller audio out to ``audio.in``, agent audio in.

* ``CallerAudio`` reads the caller's WebRTC track, resamples it with PyAV to 16 kHz mono
  s16 and publishes 20 ms frames on ``audio.in`` with raw nats-py (never FastStream: the
  per-message overhead of a handler pipeline is too high for 50 frames a second per call).
* ``Playout`` is the small jitter buffer for ``audio.out``: frames at any supported rate
  are resampled to 48 kHz and queued; ``AgentAudioTrack`` paces them out in real time and
  sends silence when the agent is quiet. ``clear()`` is barge-in.
* ``patch_aiortc`` lowers aiortc's fixed receive prefetch (4 frames, ~80 ms), replaces
  its pure-Python RFC 6465 audio-level loop with numpy and lets each answer choose the
  address its host candidates are gathered on (``advertise``).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiortc.codecs
import aiortc.rtcrtpreceiver
import aiortc.rtp
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame as AvFrame
from av import AudioResampler, CodecContext

from voicemesh.common.contracts.audio import AudioFrame, decode_frame, encode_frame
from voicemesh.gateway import advertise
from voicemesh.gateway._tasks import cancel_and_wait

__all__ = [
    "OUT_RATE",
    "AgentAudioTrack",
    "CallerAudio",
    "Playout",
    "patch_aiortc",
]

log = logging.getLogger(__name__)

IN_RATE = 16000
IN_FRAME_BYTES = IN_RATE // 50 * 2  # 640
OUT_RATE = 48000
OUT_SAMPLES = OUT_RATE // 50  # 960
OUT_FRAME_BYTES = OUT_SAMPLES * 2
OUT_TIME_BASE = fractions.Fraction(1, OUT_RATE)
TRIM_WINDOW = 50  # pulls: one second of playout
PHASE_MARGIN_S = 0.003  # how early a frame must arrive before its tick, at least

_original_level = aiortc.rtp.compute_audio_level_dbov


def patch_aiortc(
    receive_prefetch: int = 1, *, fast_level: bool = True, opus_bitrate: int | None = 32000
) -> None:
    """Process-wide aiortc tuning; calling it again replaces the previous choice.

    * aiortc 1.16 builds every audio receiver with ``JitterBuffer(capacity=16,
      prefetch=4)`` and has no knob for it: four frames of prefetch add ~80 ms to every
      caller utterance. The agent's VAD absorbs the caller's jitter, so one frame is enough.
    * Its sender computes the RFC 6465 audio level in a pure-Python loop for every frame
      (~20 % of a call's CPU); numpy does the same maths.
    * Its Opus encoder always encodes 96 kbit/s stereo; the agent speaks mono, and 32 kbit/s
      mono Opus is transparent for speech at a fraction of the encode cost. Decoding to
      mono saves the downmix before the 16 kHz resampler.
    * aioice gathers host candidates on every interface; ``advertise.gathering_on`` narrows
      that to the worker's media address for its own answers.
    """
    unpatch_aiortc()
    advertise.install()

    def jitter_buffer(capacity: int, prefetch: int = 0, is_video: bool = False) -> JitterBuffer:
        return JitterBuffer(
            capacity=capacity,
            prefetch=prefetch if is_video else receive_prefetch,
            is_video=is_video,
        )

    aiortc.rtcrtpreceiver.__dict__["JitterBuffer"] = jitter_buffer
    if fast_level:
        aiortc.rtp.compute_audio_level_dbov = _audio_level_dbov
    if opus_bitrate is not None:
        bitrate = opus_bitrate

        class MonoOpusEncoder(OpusEncoder):
            def __init__(self) -> None:
                super().__init__()
                self.codec = CodecContext.create("libopus", "w")
                self.codec.bit_rate = bitrate
                self.codec.format = "s16"
                self.codec.layout = "mono"
                self.codec.options = {"application": "voip"}
                self.codec.sample_rate = OUT_RATE
                self.codec.time_base = OUT_TIME_BASE
                self.resampler = AudioResampler(
                    format="s16", layout="mono", rate=OUT_RATE, frame_size=OUT_SAMPLES
                )

        class MonoOpusDecoder(OpusDecoder):
            def __init__(self) -> None:
                super().__init__()
                self.codec = CodecContext.create("libopus", "r")
                self.codec.format = "s16"
                self.codec.layout = "mono"
                self.codec.sample_rate = OUT_RATE

        aiortc.codecs.__dict__["OpusEncoder"] = MonoOpusEncoder
        aiortc.codecs.__dict__["OpusDecoder"] = MonoOpusDecoder


def unpatch_aiortc() -> None:
    """Back to aiortc's own behaviour (benchmarks compare both)."""
    advertise.uninstall()
    aiortc.rtcrtpreceiver.__dict__["JitterBuffer"] = JitterBuffer
    aiortc.rtp.compute_audio_level_dbov = _original_level
    aiortc.codecs.__dict__["OpusEncoder"] = OpusEncoder
    aiortc.codecs.__dict__["OpusDecoder"] = OpusDecoder


def _audio_level_dbov(frame: AvFrame) -> int:
    """RFC 6465 appendix A, as aiortc computes it, in numpy instead of a Python loop."""
    n = frame.samples * len(frame.layout.channels)
    samples = np.frombuffer(memoryview(frame.planes[0]), dtype=np.int16, count=n).astype(np.float64)
    rms = math.sqrt(float(samples @ samples) / (frame.samples * 32767.0**2))
    if rms <= 0:
        return -127
    return round(max(-127.0, min(0.0, 20 * math.log10(rms))))


def _pcm_of(frame: AvFrame) -> bytes:
    """Packed s16 bytes of exactly ``frame.samples`` (decoder planes can be larger)."""
    return bytes(frame.to_ndarray().tobytes())


Publish = Callable[[bytes], Awaitable[None]]


class CallerAudio:
    """Owns the task that turns one WebRTC track into ``audio.in`` frames."""

    def __init__(self, track: MediaStreamTrack, publish: Publish, *, seq_start: int = 0) -> None:
        self._track = track
        self._publish = publish
        self._resampler = AudioResampler(format="s16", layout="mono", rate=IN_RATE)
        self._pending = bytearray()
        self._primed = False
        self.seq = seq_start
        self.last_frame_at: float | None = None
        self.frames = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="caller-audio")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                frame = await self._track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, AvFrame):
                continue
            self.last_frame_at = time.monotonic()
            capture_us = time.time_ns() // 1000
            for out in self._resampler.resample(frame):
                self._pending += _pcm_of(out)
            if not self._primed and self._pending:
                # The resampler's filter holds back a few samples on the first frame; pad
                # once so every later frame completes a 20 ms chunk at once (else a
                # standing ~19 ms waits in ``_pending`` for the rest of the call).
                self._pending[:0] = bytes(-len(self._pending) % IN_FRAME_BYTES)
                self._primed = True
            while len(self._pending) >= IN_FRAME_BYTES:
                pcm = bytes(self._pending[:IN_FRAME_BYTES])
                del self._pending[:IN_FRAME_BYTES]
                data = encode_frame(AudioFrame(self.seq & 0xFFFFFFFF, capture_us, IN_RATE, pcm))
                self.seq += 1
                self.frames += 1
                try:
                    await self._publish(data)
                except Exception as exc:  # a NATS hiccup drops a frame, never the call
                    log.warning("audio.in publish failed: %s", type(exc).__name__)


class Playout:
    """The agent's audio for one call: 48 kHz s16 mono, a short prefill, a hard cap.

    Frames arrive from NATS paced by the agent; network jitter is absorbed by waiting for
    ``prefill_ms`` of audio after the buffer ran dry before playing again. Audio beyond
    ``max_ms`` is dropped from the front so latency stays bounded.
    """

    def __init__(self, *, prefill_ms: int = 20, max_ms: int = 2000) -> None:
        self._buffer = bytearray()
        self._prefill = OUT_RATE * prefill_ms // 1000 * 2
        self._max = OUT_RATE * max_ms // 1000 * 2
        self._resamplers: dict[int, AudioResampler] = {}
        self._primed: set[int] = set()
        self._playing = False
        self._filled_since: float | None = None
        self._prefill_s = prefill_ms / 1000
        self._min_depth = self._max
        self._pulls = 0
        self.received = 0
        self.dropped = 0
        self.trimmed = 0
        self.invalid = 0
        self.last_capture_us = 0
        self.last_push_at = 0.0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    @property
    def buffered_ms(self) -> float:
        return len(self._buffer) / 2 / OUT_RATE * 1000

    def feed(self, data: bytes) -> None:
        """Queue one ``audio.out`` frame (bad frames are counted and skipped)."""
        try:
            frame = decode_frame(data)
        except Exception:
            self.invalid += 1
            return
        self.received += 1
        self.last_capture_us = frame.capture_us
        self.push_pcm(self._to_48k(frame.pcm, frame.sample_rate))

    def push_pcm(self, pcm: bytes) -> None:
        self.last_push_at = time.monotonic()
        if not self._buffer:
            self._filled_since = time.monotonic()
        self._buffer += pcm
        if len(self._buffer) > self._max:
            excess = len(self._buffer) - self._max
            excess += excess % 2
            del self._buffer[:excess]
            self.dropped += excess // 2

    def clear(self) -> None:
        """Barge-in: drop everything queued, at once."""
        self._buffer.clear()
        self._playing = False
        self._filled_since = None

    def pull(self) -> bytes | None:
        """20 ms of 48 kHz audio, or ``None`` when the caller should hear silence."""
        if not self._playing:
            waited = (
                self._filled_since is not None
                and time.monotonic() - self._filled_since >= self._prefill_s
            )
            if len(self._buffer) < max(self._prefill, OUT_FRAME_BYTES) and not waited:
                return None
            self._playing = True
        if not self._buffer:
            self._playing = False
            self._filled_since = None
            return None
        self._trim()
        chunk = bytes(self._buffer[:OUT_FRAME_BYTES])
        del self._buffer[:OUT_FRAME_BYTES]
        if len(chunk) < OUT_FRAME_BYTES:
            chunk += bytes(OUT_FRAME_BYTES - len(chunk))
        if not self._buffer:
            self._playing = False
            self._filled_since = None
        return chunk

    def _trim(self) -> None:
        """Keep the standing delay small: the agent's clock and ours never agree exactly.

        If the buffer never held less than a frame beyond the playing one over the last
        second, that frame is pure delay (left by an underrun or by drift): drop it.
        """
        self._min_depth = min(self._min_depth, len(self._buffer))
        self._pulls += 1
        if self._pulls < TRIM_WINDOW:
            return
        if self._min_depth >= 2 * OUT_FRAME_BYTES:
            del self._buffer[:OUT_FRAME_BYTES]
            self.trimmed += 1
        self._pulls = 0
        self._min_depth = self._max

    def _to_48k(self, pcm: bytes, rate: int) -> bytes:
        if rate == OUT_RATE:
            return pcm
        resampler = self._resamplers.get(rate)
        if resampler is None:
            resampler = AudioResampler(format="s16", layout="mono", rate=OUT_RATE)
            self._resamplers[rate] = resampler
        frame = AvFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = rate
        out = b"".join(_pcm_of(f) for f in resampler.resample(frame))
        if rate not in self._primed:
            # Same first-frame filter delay as on the way in: keep whole 20 ms frames.
            self._primed.add(rate)
            out = bytes(-len(out) % OUT_FRAME_BYTES) + out
        return out


class AgentAudioTrack(MediaStreamTrack):
    """The outbound WebRTC track: 20 ms at 48 kHz from ``Playout``, in real time.

    The track ticks on its own 20 ms clock while the agent's frames arrive on the agent's;
    a fixed phase between the two is pure delay (up to a frame). Once a second the tick is
    moved earlier by the smallest wait a frame had before being sent, less a margin, so
    frames leave soon after they arrive.
    """

    kind = "audio"

    def __init__(self, playout: Playout) -> None:
        super().__init__()
        self._playout = playout
        self._pts = 0
        self._start: float | None = None
        self._ticks = 0
        self._min_wait = math.inf
        self.frames = 0
        self.late = 0
        self.phase_shift_s = 0.0

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += OUT_SAMPLES
            due = self._start + self._pts / OUT_RATE
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.010:
                self.late += 1  # the event loop could not keep the 20 ms cadence
        single = self._playout.buffered_bytes == OUT_FRAME_BYTES
        pcm = self._playout.pull()
        if pcm is not None and single:
            self._min_wait = min(self._min_wait, time.monotonic() - self._playout.last_push_at)
        self._align()
        frame = AvFrame(format="s16", layout="mono", samples=OUT_SAMPLES)
        frame.planes[0].update(pcm or bytes(OUT_FRAME_BYTES))
        frame.sample_rate = OUT_RATE
        frame.pts = self._pts
        frame.time_base = OUT_TIME_BASE
        self.frames += 1
        return frame

    def _align(self) -> None:
        self._ticks += 1
        if self._ticks < TRIM_WINDOW:
            return
        if self._start is not None and self._min_wait != math.inf:
            shift = self._min_wait - PHASE_MARGIN_S
            if shift > 0.001:
                self._start -= min(shift, 0.020)
                self.phase_shift_s += min(shift, 0.020)
        self._ticks = 0
        self._min_wait = math.inf
