"""The process-wide eSpeak NG engine: real synthesis from the wheel, off the event loop."""

from __future__ import annotations

import asyncio

import numpy as np

from voicemesh.common.runtime.speech import espeak, resample, speak


def _seconds(pcm: bytes, rate: int) -> float:
    return len(pcm) / 2 / rate


def test_speak_gives_audible_speech_of_a_plausible_length() -> None:
    pcm = speak("book a haircut for tomorrow at three pm", 16000)
    assert 1.0 < _seconds(pcm, 16000) < 5.0
    samples = np.frombuffer(pcm, dtype=np.int16)
    assert np.abs(samples).max() > 3000  # speech, not near-silence


async def test_concurrent_syntheses_each_get_their_own_audio() -> None:
    """One engine, serialised: concurrent callers never receive each other's audio."""
    short, long = "yes", "i would like to book an appointment next tuesday afternoon please"
    results = await asyncio.gather(
        *(espeak().synthesize(text, 16000) for text in [short, long] * 4)
    )
    alone_short, alone_long = speak(short), speak(long)
    for text, pcm in zip([short, long] * 4, results, strict=True):
        expected = alone_short if text == short else alone_long
        assert abs(len(pcm) - len(expected)) <= 640, text


def test_resample_keeps_duration() -> None:
    pcm = speak("three", 22050)
    out = resample(pcm, 22050, 16000)
    assert abs(_seconds(out, 16000) - _seconds(pcm, 22050)) < 0.01
    assert resample(b"", 22050, 16000) == b""


def test_no_other_module_loads_the_espeak_library() -> None:
    """A second wrapper would install its own synthesis callback and steal this one's audio."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    engine = root / "libs/common/src/voicemesh/common/runtime/speech.py"
    allowed = {engine, Path(__file__).resolve()}
    offenders = [
        str(path.relative_to(root))
        for folder in ("libs", "services", "tools", "tests", "bench")
        for path in (root / folder).rglob("*.py")
        if "espeakng_loader" in path.read_text() and path.resolve() not in allowed
    ]
    assert offenders == []


def test_threads_speaking_first_at_once_share_one_engine() -> None:
    """The first use from several threads at the same moment creates one engine, not many
    (in a fresh process: this one's engine already exists)."""
    import subprocess
    import sys

    program = """
import threading
from voicemesh.common.runtime.speech import espeak, speak
barrier = threading.Barrier(6)
engines, audio = [], []
def first_use():
    barrier.wait()
    engines.append(espeak())
    audio.append(speak("yes"))
threads = [threading.Thread(target=first_use) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
print(len({id(e) for e in engines}), min(len(a) for a in audio))
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    engines, shortest = map(int, done.stdout.split())
    assert engines == 1
    assert shortest > 3200  # every thread got its own word, none an empty buffer
