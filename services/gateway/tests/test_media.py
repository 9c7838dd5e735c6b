"""The playout jitter buffer and the aiortc receive-latency patch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiortc.rtcrtpreceiver
import numpy as np
import pytest

from voicemesh.common import encode_frame
from voicemesh.common.contracts.audio import AudioFrame
from voicemesh.gateway.media import (
    OUT_RATE,
    AgentAudioTrack,
    Playout,
    patch_aiortc,
    unpatch_aiortc,
)
from voicemesh.testkit.tracks import dominant_frequency


def _tone(rate: int, frequency: float, seq: int) -> bytes:
    n = rate // 50
    t = (seq * n + np.arange(n)) / rate
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2").tobytes()
    return encode_frame(AudioFrame.now(seq, pcm, rate))


def test_quiet_agent_means_silence() -> None:
    playout = Playout(prefill_ms=40)
    assert playout.pull() is None
    playout.feed(b"not a frame")
    assert playout.invalid == 1 and playout.pull() is None


def test_agent_audio_at_16_and_24_khz_plays_at_48_khz_same_pitch() -> None:
    for rate in (16000, 24000, 48000):
        playout = Playout(prefill_ms=0)
        for seq in range(25):
            playout.feed(_tone(rate, 440.0, seq))
        out = b"".join(chunk for _ in range(20) if (chunk := playout.pull()))
        assert len(out) >= 18 * 1920, rate
        assert abs(dominant_frequency(out, OUT_RATE) - 440.0) < 5, rate


def test_prefill_waits_for_two_frames_or_for_time() -> None:
    playout = Playout(prefill_ms=40)
    playout.feed(_tone(48000, 440.0, 0))
    assert playout.pull() is None  # 20 ms queued, 40 ms wanted
    playout.feed(_tone(48000, 440.0, 1))
    assert playout.pull() is not None and playout.pull() is not None
    assert playout.pull() is None  # ran dry: prefill again
    playout.feed(_tone(48000, 440.0, 2))
    time.sleep(0.05)
    assert playout.pull() is not None  # a lone tail is not stuck forever


def test_interrupt_empties_and_cap_bounds_latency() -> None:
    playout = Playout(prefill_ms=0, max_ms=200)
    for seq in range(50):
        playout.feed(_tone(48000, 440.0, seq))
    assert playout.buffered_ms == 200 and playout.dropped == 40 * 960
    playout.clear()
    assert playout.buffered_ms == 0 and playout.pull() is None


def test_a_standing_frame_of_delay_is_trimmed() -> None:
    playout = Playout(prefill_ms=0)
    seq = 0
    for _ in range(3):
        playout.feed(_tone(48000, 440.0, seq))
        seq += 1
    for _ in range(120):  # the agent keeps pace: one frame in for each frame out
        assert playout.pull() is not None
        playout.feed(_tone(48000, 440.0, seq))
        seq += 1
    assert playout.trimmed == 2 and playout.buffered_ms == 20


@pytest.mark.slow  # measures a millisecond phase shift: the serial phase
async def test_agent_track_moves_its_tick_next_to_the_arrivals() -> None:
    playout = Playout(prefill_ms=0)
    track = AgentAudioTrack(playout)
    frame = _tone(48000, 440.0, 0)

    async def agent() -> None:
        # Paced on its own clock like a real agent: frames land ~15 ms before the ticks.
        start = time.monotonic() + 0.005
        n = 0
        while True:
            playout.feed(frame)
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.020 - time.monotonic()))

    await track.recv()
    feeder = asyncio.get_running_loop().create_task(agent())
    try:
        for _ in range(110):
            await track.recv()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        track.stop()
    assert 0.002 < track.phase_shift_s < 0.030  # ~12 ms: 15 ms early, less the margin


def _receiver_jitter_buffer() -> Any:
    """The name aiortc's receiver builds its jitter buffer with (what the patch replaces)."""
    return vars(aiortc.rtcrtpreceiver)["JitterBuffer"]


def test_receive_prefetch_patch() -> None:
    try:
        patch_aiortc(1)
        buffer = _receiver_jitter_buffer()(capacity=16, prefetch=4)
        assert buffer._prefetch == 1
        video = _receiver_jitter_buffer()(capacity=128, is_video=True)
        assert video._prefetch == 0
        unpatch_aiortc()
        assert _receiver_jitter_buffer()(capacity=16, prefetch=4)._prefetch == 4
    finally:
        patch_aiortc(1)
