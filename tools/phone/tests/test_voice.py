"""The simulated caller's microphone: silence until told to speak, speech paced in real time."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from voicemesh.phone.voice import VOICE_RATE, CallerVoice, synthesize


def _rms(frame_pcm: bytes) -> float:
    samples = np.frombuffer(frame_pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


async def test_voice_is_silent_then_says_the_queued_line_in_real_time_then_silent() -> None:
    voice = CallerVoice()
    first = await voice.recv()
    assert first.sample_rate == VOICE_RATE and first.samples == VOICE_RATE // 50
    assert _rms(bytes(first.planes[0])[: first.samples * 2]) == 0

    line = synthesize("book a haircut", 16000)
    seconds = len(line) / 2 / 16000
    done = voice.queue(line, 16000)
    assert voice.speaking
    started = time.monotonic()
    loud = 0
    frames = 0
    while not done.done():
        frame = await voice.recv()
        frames += 1
        loud += _rms(bytes(frame.planes[0])[: frame.samples * 2]) > 300
        await asyncio.sleep(0)
    elapsed = time.monotonic() - started
    # All of the line went out, 20 ms a frame, paced like a microphone (not all at once).
    assert abs(frames * 0.02 - seconds) <= 0.04
    assert elapsed >= seconds - 0.1
    assert loud > frames // 3
    assert not voice.speaking
    after = await voice.recv()
    assert _rms(bytes(after.planes[0])[: after.samples * 2]) == 0
    voice.stop()


async def test_stopping_the_voice_releases_whoever_waits_for_a_line() -> None:
    voice = CallerVoice()
    waiting = voice.queue(synthesize("hello", VOICE_RATE))
    voice.stop()
    assert waiting.cancelled()
