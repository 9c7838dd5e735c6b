"""A call's transcript as plain text, JSON or WebVTT (W3C WebVTT, for players and captions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from voicemesh.transcript.models import SegmentRow

__all__ = ["as_json", "as_text", "as_webvtt", "segment_json"]

_LABELS = {"caller": "Caller", "agent": "Agent"}


def _label(speaker: str) -> str:
    return _LABELS.get(speaker, speaker.title())


def _clock(seconds: float, *, vtt: bool) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    if vtt:
        return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def segment_json(row: SegmentRow) -> dict[str, Any]:
    return {
        "segment_id": row.segment_id,
        "speaker": row.speaker,
        "text": row.text,
        "start_s": row.start_s,
        "end_s": row.end_s,
        "final": row.final,
        "occurred_at": row.occurred_at,
    }


def as_json(tenant: str, call_id: str, rows: Sequence[SegmentRow]) -> dict[str, Any]:
    return {"tenant": tenant, "call_id": call_id, "segments": [segment_json(r) for r in rows]}


def as_text(rows: Sequence[SegmentRow]) -> str:
    """``[00:00:01] Caller: text`` per segment."""
    return "".join(
        f"[{_clock(r.start_s, vtt=False)}] {_label(r.speaker)}: {' '.join(r.text.split())}\n"
        for r in rows
    )


def _vtt_escape(text: str) -> str:
    # Cue text may not contain "-->" or raw "<" / "&"; escaping those three covers it.
    return " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def as_webvtt(rows: Sequence[SegmentRow]) -> str:
    """A WebVTT file with one cue per segment and a voice span naming the speaker."""
    lines = ["WEBVTT", ""]
    for n, r in enumerate(rows, start=1):
        # A cue's end must be after its start; a zero-length segment gets one millisecond.
        end = max(r.end_s, r.start_s + 0.001)
        lines += [
            str(n),
            f"{_clock(r.start_s, vtt=True)} --> {_clock(end, vtt=True)}",
            f"<v {_label(r.speaker)}>{_vtt_escape(r.text)}",
            "",
        ]
    return "\n".join(lines)
