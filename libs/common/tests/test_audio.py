"""The binary audio frame codec: round trips and malformed frames."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicemesh.common.contracts.audio import (
    HEADER_SIZE,
    SUPPORTED_RATES,
    AudioFrame,
    AudioFrameError,
    decode_frame,
    encode_frame,
    frame_bytes,
)


def test_frame_sizes_are_20ms_of_s16le_mono() -> None:
    assert frame_bytes(16000) == 640
    assert frame_bytes(48000) == 1920
    assert frame_bytes(8000) == 320
    assert HEADER_SIZE == 24


@given(
    seq=st.integers(0, 2**32 - 1),
    capture_us=st.integers(0, 2**64 - 1),
    rate=st.sampled_from(sorted(SUPPORTED_RATES)),
    end=st.booleans(),
    data=st.data(),
)
def test_round_trip(seq: int, capture_us: int, rate: int, end: bool, data: st.DataObject) -> None:
    pcm = data.draw(st.binary(min_size=frame_bytes(rate), max_size=frame_bytes(rate)))
    frame = AudioFrame(seq, capture_us, rate, pcm, end_of_utterance=end)
    wire = encode_frame(frame)
    assert len(wire) == HEADER_SIZE + frame_bytes(rate)
    assert decode_frame(wire) == frame


def _good() -> bytes:
    return encode_frame(AudioFrame(7, 1_700_000_000_000_000, 16000, bytes(640)))


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"", "shorter than"),
        (_good()[:10], "shorter than"),
        (b"XX" + _good()[2:], "bad magic"),
        (_good()[:2] + b"\x09" + _good()[3:], "version"),
        (_good()[:-2], "PCM is 638 bytes"),
        (_good() + b"\x00\x00", "PCM is 642 bytes"),
        (_good()[:16] + struct.pack("!I", 44100) + _good()[20:], "sample rate 44100"),
    ],
)
def test_malformed_frames_are_rejected_with_a_reason(wire: bytes, message: str) -> None:
    with pytest.raises(AudioFrameError, match=message):
        decode_frame(wire)


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_raise_audio_frame_error(wire: bytes) -> None:
    try:
        frame = decode_frame(wire)
    except AudioFrameError:
        return
    assert encode_frame(frame) == wire[: HEADER_SIZE - 4] + b"\x00" * 4 + wire[HEADER_SIZE:]


@pytest.mark.parametrize(
    "frame",
    [
        AudioFrame(0, 0, 16000, bytes(100)),
        AudioFrame(0, 0, 11025, bytes(441)),
        AudioFrame(2**32, 0, 16000, bytes(640)),
        AudioFrame(-1, 0, 16000, bytes(640)),
    ],
)
def test_encoder_refuses_invalid_frames(frame: AudioFrame) -> None:
    with pytest.raises(AudioFrameError):
        encode_frame(frame)
