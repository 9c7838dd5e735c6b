"""The simulated caller's voice: eSpeak NG speech, and the microphone that says it on cue.

``synthesize`` turns a line of text into PCM with the process's eSpeak NG engine
(``voicemesh.common.runtime.speech``: the library ships in the ``espeakng-loader`` wheel).
``CallerVoice``, the phone's outgoing track (silence until ``play``/``queue`` gives it
speech, 20 ms frames at 48 kHz paced in real time), is the test kit's
(``voicemesh.testkit.tracks``), so a test or ``voicemesh call`` can answer each of the
agent's replies as a person would.
"""

from __future__ import annotations

from voicemesh.common.runtime.speech import speak
from voicemesh.testkit.tracks import RATE as VOICE_RATE
from voicemesh.testkit.tracks import CallerVoice

__all__ = ["VOICE_RATE", "CallerVoice", "synthesize"]


def synthesize(
    text: str, sample_rate: int = VOICE_RATE, *, voice: str = "en-us", words_per_minute: int = 170
) -> bytes:
    """``text`` spoken by eSpeak NG, s16le mono PCM at ``sample_rate`` (blocking, ~ms)."""
    return speak(text, sample_rate, voice=voice, rate=words_per_minute)
