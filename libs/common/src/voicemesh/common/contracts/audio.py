"""Binary audio frames for the media subjects (``audio.in`` / ``audio.out``).

A frame is a fixed 24-byte header followed by 20 ms of signed 16-bit little-endian mono PCM::

    offset size field
    0      2    magic b"VA"
    2      1    version (1)
    3      1    flags (bit 0: end of utterance)
    4      4    sequence number, uint32 big-endian, wraps
    8      8    capture timestamp, microseconds since the Unix epoch, uint64 big-endian
    16     4    sample rate in Hz, uint32 big-endian (8000, 16000, 24000 or 48000)
    20     4    reserved (zero)
    24     n    PCM, n = sample_rate / 50 * 2 bytes

Media is hot-path data, so this is a dataclass and ``struct``, never Pydantic.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from voicemesh.common.contracts.errors import InvalidMessage

__all__ = [
    "FRAME_MS",
    "HEADER_SIZE",
    "SUPPORTED_RATES",
    "AudioFrame",
    "AudioFrameError",
    "decode_frame",
    "encode_frame",
    "frame_bytes",
]

MAGIC = b"VA"
VERSION = 1
FRAME_MS = 20
SUPPORTED_RATES = frozenset({8000, 16000, 24000, 48000})
FLAG_END_OF_UTTERANCE = 0x01

_HEADER = struct.Struct("!2sBBIQII")
HEADER_SIZE = _HEADER.size  # 24


class AudioFrameError(InvalidMessage):
    """Bytes that are not a valid voicemesh audio frame."""


def frame_bytes(sample_rate: int) -> int:
    """PCM bytes in one 20 ms frame at ``sample_rate``."""
    return sample_rate * FRAME_MS // 1000 * 2


@dataclass(frozen=True, slots=True)
class AudioFrame:
    seq: int
    capture_us: int
    sample_rate: int
    pcm: bytes
    end_of_utterance: bool = False

    @classmethod
    def now(cls, seq: int, pcm: bytes, sample_rate: int = 16000) -> AudioFrame:
        return cls(
            seq=seq & 0xFFFFFFFF,
            capture_us=time.time_ns() // 1000,
            sample_rate=sample_rate,
            pcm=pcm,
        )

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2


def encode_frame(frame: AudioFrame) -> bytes:
    if frame.sample_rate not in SUPPORTED_RATES:
        raise AudioFrameError(f"unsupported sample rate {frame.sample_rate}")
    expected = frame_bytes(frame.sample_rate)
    if len(frame.pcm) != expected:
        raise AudioFrameError(
            f"PCM is {len(frame.pcm)} bytes; 20 ms at {frame.sample_rate} Hz is {expected}"
        )
    if not 0 <= frame.seq <= 0xFFFFFFFF:
        raise AudioFrameError(f"sequence number {frame.seq} does not fit in 32 bits")
    if not 0 <= frame.capture_us <= 0xFFFFFFFFFFFFFFFF:
        raise AudioFrameError("capture timestamp out of range")
    flags = FLAG_END_OF_UTTERANCE if frame.end_of_utterance else 0
    header = _HEADER.pack(MAGIC, VERSION, flags, frame.seq, frame.capture_us, frame.sample_rate, 0)
    return header + frame.pcm


def decode_frame(data: bytes) -> AudioFrame:
    if len(data) < HEADER_SIZE:
        raise AudioFrameError(
            f"frame is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    magic, version, flags, seq, capture_us, rate, _reserved = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise AudioFrameError(f"bad magic {magic!r}")
    if version != VERSION:
        raise AudioFrameError(f"unsupported frame version {version}")
    if rate not in SUPPORTED_RATES:
        raise AudioFrameError(f"unsupported sample rate {rate}")
    pcm = bytes(data[HEADER_SIZE:])
    if len(pcm) != frame_bytes(rate):
        raise AudioFrameError(f"PCM is {len(pcm)} bytes; 20 ms at {rate} Hz is {frame_bytes(rate)}")
    return AudioFrame(
        seq=seq,
        capture_us=capture_us,
        sample_rate=rate,
        pcm=pcm,
        end_of_utterance=bool(flags & FLAG_END_OF_UTTERANCE),
    )
