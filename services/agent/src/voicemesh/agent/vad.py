"""Silero VAD and Smart Turn v3 through onnxruntime, from the ONNX files of the pipecat-ai wheel.

Only the two model files are used: pipecat itself is never imported (its framework
dependencies are not installed). Each model is one ``InferenceSession`` per process, loaded
on first use under a lock and shared by every call (``run`` is thread-safe); what a call
keeps between frames (Silero's recurrent state) lives in its own ``SileroStream``.

Silero VAD scores 32 ms windows (512 samples at 16 kHz, with 64 samples of context): cheap
(well under a millisecond) and run inline. Smart Turn v3 reads the last 8 s of a turn as
Whisper log-mel features and says whether the speaker has finished: tens of milliseconds,
so callers on an event loop go through ``SmartTurn.predict`` (a worker thread).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SILERO_VAD_FILE",
    "SMART_TURN_FILE",
    "OnnxModel",
    "SileroStream",
    "SmartTurn",
    "TurnPrediction",
    "silero_vad",
    "smart_turn",
]

_DISTRIBUTION = "pipecat-ai"
SILERO_VAD_FILE = "pipecat/audio/vad/data/silero_vad.onnx"
SMART_TURN_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"

SAMPLE_RATE = 16000
_WINDOW = 512  # Silero's window at 16 kHz
_CONTEXT = 64  # samples of the previous window Silero sees with each window
_TURN_SECONDS = 8  # Smart Turn reads the last 8 s, zero-padded at the start


def packaged_model(relative: str) -> Path:
    """A file of the pipecat-ai wheel, found without importing pipecat."""
    path = Path(str(importlib.metadata.distribution(_DISTRIBUTION).locate_file(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{relative} is missing from the {_DISTRIBUTION} wheel")
    return path


class OnnxModel:
    """One ONNX model on the CPU, loaded lazily once; ``run`` may be called from any thread."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.path = path
        self.threads = threads
        self._session: Any = None
        self._lock = threading.Lock()

    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.inter_op_num_threads = 1
                options.intra_op_num_threads = self.threads
                options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
                options.log_severity_level = 3
                self._session = onnxruntime.InferenceSession(
                    str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            return self._session

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session().run(None, inputs))


class SileroStream:
    """One audio stream's voice activity: feed 16 kHz s16le PCM, read speech probability."""

    def __init__(self, model: OnnxModel) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, _CONTEXT), dtype=np.float32)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self.probability = 0.0  # of the latest complete window
        self.inferences = 0
        self.inference_s = 0.0  # total time spent in the model

    def feed(self, pcm: bytes) -> float:
        """Add ``pcm`` (any length); returns the probability of the latest complete window."""
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16)
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float32) / 32768.0])
        while len(self._buffer) >= _WINDOW:
            window, self._buffer = self._buffer[:_WINDOW], self._buffer[_WINDOW:]
            framed = np.concatenate([self._context, window[None]], axis=1)
            started = time.perf_counter()
            out, self._state = self._model.run(
                {"input": framed, "state": self._state, "sr": self._rate}
            )
            self.inference_s += time.perf_counter() - started
            self.inferences += 1
            self._context = framed[:, -_CONTEXT:]
            self.probability = float(out[0][0])
        return self.probability

    def reset(self) -> None:
        self._state[:] = 0
        self._context[:] = 0
        self._buffer = np.zeros(0, dtype=np.float32)
        self.probability = 0.0


@dataclass(frozen=True)
class TurnPrediction:
    complete: bool
    probability: float  # that the speaker has finished their turn
    seconds: float  # features and inference


class SmartTurn:
    """Smart Turn v3: has the speaker finished, judged from how the turn's audio ends."""

    def __init__(self, model: OnnxModel, *, threshold: float = 0.5) -> None:
        from faster_whisper.feature_extractor import FeatureExtractor

        self._model = model
        self.threshold = threshold
        # Whisper's log-mel features over 8 s: the same as Smart Turn's own extractor.
        self._features = FeatureExtractor(
            feature_size=80, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=8
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")

    def predict_blocking(self, pcm: bytes) -> TurnPrediction:
        """``pcm``: the turn so far (16 kHz s16le); only its last 8 s count."""
        started = time.perf_counter()
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16)
        audio = samples[-_TURN_SECONDS * SAMPLE_RATE :].astype(np.float32) / 32768.0
        audio = np.pad(audio, (_TURN_SECONDS * SAMPLE_RATE - len(audio), 0))
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        features = self._features(audio, padding=0)[:, : _TURN_SECONDS * 100]
        (logits,) = self._model.run({"input_features": features[None].astype(np.float32)})
        probability = float(logits.reshape(-1)[0])
        return TurnPrediction(
            probability > self.threshold, probability, time.perf_counter() - started
        )

    async def predict(self, pcm: bytes) -> TurnPrediction:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.predict_blocking, pcm)


_models: dict[str, OnnxModel] = {}
_models_lock = threading.Lock()


def _shared(relative: str) -> OnnxModel:
    with _models_lock:
        if relative not in _models:
            _models[relative] = OnnxModel(packaged_model(relative))
        return _models[relative]


def silero_vad() -> OnnxModel:
    """The process's Silero VAD model (``SileroStream(silero_vad())`` per audio stream)."""
    return _shared(SILERO_VAD_FILE)


_smart_turn: SmartTurn | None = None


def smart_turn() -> SmartTurn:
    """The process's Smart Turn v3 (one worker thread: predictions queue, calls share it)."""
    global _smart_turn
    model = _shared(SMART_TURN_FILE)
    with _models_lock:
        if _smart_turn is None:
            _smart_turn = SmartTurn(model)
        return _smart_turn
