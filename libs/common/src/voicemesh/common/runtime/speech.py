"""eSpeak NG text to speech from the ``espeakng-loader`` wheel, one engine per process.

The C library keeps global state: one initialisation, one synthesis callback, one
synthesis at a time. Every component of a process that speaks (the agent's offline voice,
the simulated phone, the OpenAI-compatible simulator, the test callers) therefore goes
through the single engine here; two wrappers around the same library would steal each
other's audio through the shared callback.

Install with the ``speech`` extra: ``voicemesh-common[speech]``.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["EspeakEngine", "SpeechError", "espeak", "resample", "speak", "wav_from_pcm"]

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class SpeechError(RuntimeError):
    """eSpeak NG could not be loaded or did not synthesise the text."""


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """Linear-interpolation resampling of s16le mono; plenty for telephone-band speech."""
    if from_rate == to_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16).astype(np.float32)
    count = int(len(samples) * to_rate / from_rate)
    positions = np.arange(count, dtype=np.float64) * (from_rate / to_rate)
    out = np.interp(positions, np.arange(len(samples)), samples)
    return bytes(np.clip(out, -32768, 32767).astype(np.int16).tobytes())


def wav_from_pcm(pcm: bytes, sample_rate: int) -> bytes:
    """``pcm`` (s16le mono) as a WAV file, the upload format every transcription model reads."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buffer.getvalue()


class EspeakEngine:
    """The eSpeak NG library, loaded once; syntheses are serialised under one lock."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - a packaging error
            raise SpeechError("eSpeak NG needs the speech extra: voicemesh-common[speech]") from exc
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Synth.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        self.native_rate = int(self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0))
        if self.native_rate <= 0:
            raise SpeechError("eSpeak NG failed to initialise")
        self._chunks: list[bytes] = []
        self._callback = _SynthCallback(self._on_audio)  # kept alive: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")

    def _on_audio(self, wav: Any, count: int, _events: Any) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0

    def synthesize_blocking(self, text: str, *, voice: str = "en-us", rate: int = 170) -> bytes:
        """PCM at ``native_rate`` (22050 Hz); raises ``SpeechError`` rather than return silence."""
        with self._lock:
            self._chunks = []
            self._lib.espeak_SetVoiceByName(voice.encode())
            self._lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
            data = text.encode("utf-8")
            status = self._lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            self._lib.espeak_Synchronize()
            pcm = b"".join(self._chunks)
        if status != _EE_OK:
            raise SpeechError(f"eSpeak NG failed with status {status}")
        if text.strip() and not pcm:
            raise SpeechError("eSpeak NG produced no audio")
        return pcm

    async def synthesize(
        self, text: str, sample_rate: int, *, voice: str = "en-us", rate: int = 170
    ) -> bytes:
        """``text`` at ``sample_rate``, synthesised off the event loop."""
        loop = asyncio.get_running_loop()
        pcm = await loop.run_in_executor(
            self._thread, lambda: self.synthesize_blocking(text, voice=voice, rate=rate)
        )
        return resample(pcm, self.native_rate, sample_rate)


_engine: EspeakEngine | None = None
_engine_lock = threading.Lock()


def espeak() -> EspeakEngine:
    """The process's eSpeak engine (the C library allows exactly one).

    Created under a lock: two threads speaking first at the same moment must not both
    initialise the library, or the second engine's callback takes the first one's audio.
    """
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = EspeakEngine()
        return _engine


def speak(text: str, sample_rate: int = 16000, *, voice: str = "en-us", rate: int = 170) -> bytes:
    """Blocking synthesis for tools and tests: eSpeak PCM at ``sample_rate``."""
    engine = espeak()
    return resample(
        engine.synthesize_blocking(text, voice=voice, rate=rate), engine.native_rate, sample_rate
    )
