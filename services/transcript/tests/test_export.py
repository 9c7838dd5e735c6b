"""Transcript exports: plain text and WebVTT that a player accepts."""

from __future__ import annotations

import re

from voicemesh.common.contracts.events import Speaker
from voicemesh.testkit.events import transcript_segment
from voicemesh.transcript.export import as_text, as_webvtt
from voicemesh.transcript.models import SegmentRow

CUE_TIMING = re.compile(r"^(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})$")


def row(speaker: Speaker, n: int, text: str, start: float, end: float) -> SegmentRow:
    segment = transcript_segment("acme", "c1", speaker, n, text, start_s=start, end_s=end)
    return SegmentRow(**SegmentRow.values_of(segment))


ROWS = [
    row(Speaker.AGENT, 0, "Hello, this is Ada --> how can I help?", 0.0, 2.25),
    row(Speaker.CALLER, 0, "Book <me> for 3 & 4pm\nplease", 3661.5, 3663.0),
    row(Speaker.CALLER, 1, "ok", 3670.0, 3670.0),
]


def _seconds(parts: tuple[str, ...]) -> float:
    h, m, s, ms = (int(p) for p in parts)
    return h * 3600 + m * 60 + s + ms / 1000


def test_webvtt_has_a_header_and_one_valid_cue_per_segment() -> None:
    vtt = as_webvtt(ROWS)
    assert vtt.startswith("WEBVTT\n\n")
    blocks = vtt.strip().split("\n\n")[1:]
    assert len(blocks) == 3
    for n, block in enumerate(blocks, start=1):
        ident, timing, payload = block.split("\n")
        assert ident == str(n)
        match = CUE_TIMING.match(timing)
        assert match, timing
        start, end = _seconds(match.groups()[:4]), _seconds(match.groups()[4:])
        assert end > start  # WebVTT requires it, even for a zero-length segment
        assert "-->" not in payload and "\n" not in payload
    assert blocks[0].split("\n")[2] == "<v Agent>Hello, this is Ada --&gt; how can I help?"
    assert blocks[1].split("\n")[1] == "01:01:01.500 --> 01:01:03.000"
    assert blocks[1].split("\n")[2] == "<v Caller>Book &lt;me&gt; for 3 &amp; 4pm please"


def test_text_export_is_one_line_per_segment_with_speaker_and_time() -> None:
    assert as_text(ROWS).splitlines() == [
        "[00:00:00] Agent: Hello, this is Ada --> how can I help?",
        "[01:01:01] Caller: Book <me> for 3 & 4pm please",
        "[01:01:10] Caller: ok",
    ]
