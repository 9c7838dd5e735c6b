"""The simulator's own ears and voice: pocketsphinx and eSpeak NG, straight from their wheels.

Independent of the agent on purpose: the simulator stands in for a third party, so it shares
no code with the service it is used to test, only ``voicemesh.common.runtime.speech``: the
process-wide eSpeak NG engine (the C library allows one per process) and the WAV writer.
Transcription is real recognition: with a list of expected phrases (``--phrases``) the
recogniser uses a grammar of exactly those sentences, which is how tests get dependable text
from synthetic speech; without one it uses pocketsphinx's general English model.
"""

from __future__ import annotations

import io
import threading
import wave
from functools import cache
from pathlib import Path

import numpy as np
import pocketsphinx
from pocketsphinx import Decoder

from voicemesh.common.runtime.speech import resample, speak, wav_from_pcm

__all__ = [
    "AudioError",
    "Recognizer",
    "Voice",
    "pcm_from_wav",
    "resample",
    "wav_from_pcm",
]


class AudioError(ValueError):
    """Uploaded audio the simulator cannot read (not a 16-bit mono PCM WAV)."""


def pcm_from_wav(data: bytes) -> tuple[bytes, int]:
    """(s16le mono PCM, sample rate) of a WAV file; stereo is mixed down."""
    try:
        with wave.open(io.BytesIO(data), "rb") as source:
            if source.getsampwidth() != 2:
                raise AudioError("only 16-bit PCM WAV is supported")
            channels, rate = source.getnchannels(), source.getframerate()
            frames = source.readframes(source.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"not a WAV file: {exc}") from exc
    if channels > 1:
        samples = np.frombuffer(frames, dtype=np.int16).reshape(-1, channels)
        frames = samples.mean(axis=1).astype(np.int16).tobytes()
    return frames, rate


class Voice:
    """The process's eSpeak NG engine (``voicemesh.common.runtime.speech``), serialised there."""

    def speak(self, text: str, sample_rate: int, *, voice: str = "en-us", rate: int = 175) -> bytes:
        """Blocking: ``text`` as s16le mono PCM at ``sample_rate``."""
        return speak(text, sample_rate, voice=voice, rate=rate)


@cache
def _dictionary() -> frozenset[str]:
    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    with path.open(encoding="utf-8", errors="replace") as handle:
        return frozenset(line.split(" ", 1)[0].split("(", 1)[0] for line in handle)


def _words(sentence: str) -> list[str]:
    cleaned = "".join(c if c.isalnum() or c in " '" else " " for c in sentence.lower())
    return cleaned.split()


class Recognizer:
    """Speech to text for whole utterances (16 kHz), one decoder guarded by a lock."""

    def __init__(self, phrases: list[str] | None = None) -> None:
        self._decoder = Decoder(samprate=16000, loglevel="FATAL")
        self._lock = threading.Lock()
        self.phrases: dict[str, str] = {}
        if phrases:
            known = _dictionary()
            for phrase in phrases:
                words = [w for w in _words(phrase) if w in known]
                if words:
                    self.phrases[" ".join(words)] = phrase
            alternatives = " | ".join(f"({p})" for p in self.phrases)
            self._decoder.add_jsgf_string(
                "phrases", f"#JSGF V1.0; grammar phrases; public <s> = {alternatives};"
            )
            self._decoder.activate_search("phrases")

    def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        """Blocking: the text of one utterance (an expected phrase, as registered)."""
        audio = resample(pcm, sample_rate, 16000)
        padding = bytes(6400)  # 200 ms of silence each side helps the recogniser's endpoints
        with self._lock:
            decoder = self._decoder
            decoder.start_utt()
            decoder.process_raw(padding + audio + padding, False, False)
            decoder.end_utt()
            hyp = decoder.hyp()
        heard = str(hyp.hypstr) if hyp is not None else ""
        return self.phrases.get(heard, heard)
