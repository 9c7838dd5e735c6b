"""Offline speech: eSpeak NG (text to speech) and pocketsphinx (speech to text) from wheels.

eSpeak NG is the process-wide engine of ``voicemesh.common.runtime.speech`` (the C library keeps
global state, so every component of a process shares it). Pocketsphinx decoders take ~0.2 s
to load, and loading holds the GIL (~0.35 s of event-loop stall here, even from a worker
thread: every other call's audio would stall with it), so a pool per grammar is filled at
startup, lends decoders to calls and takes them back.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from pocketsphinx import Decoder

from voicemesh.common.runtime.speech import EspeakEngine, espeak, resample, speak

__all__ = [
    "DECODER_CONFIG",
    "IN_RATE",
    "DecoderPool",
    "EspeakEngine",
    "espeak",
    "hypothesis",
    "resample",
    "speak",
]


#: The rate the agent hears callers at (s16le mono), the recogniser's own.
IN_RATE = 16000

#: Pocketsphinx settings for every decoder of the pipeline. ``bestpath`` off: the lattice
#: rescoring it adds costs ~110 ms (up to ~0.9 s) per utterance when the hypothesis is read,
#: for no gain with a vertical's grammar (measured: WER 0.067 without, 0.077 with).
DECODER_CONFIG: dict[str, object] = {"samprate": IN_RATE, "loglevel": "FATAL", "bestpath": False}


class DecoderPool:
    """Pocketsphinx decoders keyed by grammar (or the general model), lent one per call."""

    def __init__(self) -> None:
        self._idle: dict[str, list[Decoder]] = defaultdict(list)
        self._lock = threading.Lock()
        self.loaded = 0  # decoders this pool has loaded

    def acquire(self, key: str, grammar: str | None) -> Decoder:
        """Blocking (a new decoder loads its model): call it from a worker thread."""
        with self._lock:
            if self._idle[key]:
                return self._idle[key].pop()
        decoder = Decoder(**DECODER_CONFIG)
        with self._lock:
            self.loaded += 1
        if grammar is not None:
            decoder.add_jsgf_string(key, grammar)
            decoder.activate_search(key)
        return decoder

    def warm(self, key: str, grammar: str | None) -> None:
        """Blocking: make sure one decoder for ``key`` is idle, loading it if need be."""
        with self._lock:
            if self._idle[key]:
                return
        self.release(key, self.acquire(key, grammar))

    def release(self, key: str, decoder: Decoder) -> None:
        with self._lock:
            self._idle[key].append(decoder)


def decode_blocking(decoder: Decoder, pcm: bytes) -> str:
    """One whole utterance through ``decoder``."""
    decoder.start_utt()
    for offset in range(0, len(pcm), 640):
        decoder.process_raw(pcm[offset : offset + 640], False, False)
    decoder.end_utt()
    return hypothesis(decoder)


def hypothesis(decoder: Decoder) -> str:
    """The decoder's best hypothesis so far ("" when it has none); cheap with bestpath off."""
    hyp = decoder.hyp()
    return str(hyp.hypstr) if hyp is not None else ""
