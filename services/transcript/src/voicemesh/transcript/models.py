"""The transcript service's table: one row per transcript segment."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Column, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from voicemesh.common.contracts.events import TranscriptSegment
from voicemesh.common.runtime.db import iso_timestamp

__all__ = ["SEGMENTS", "SegmentRow"]


class SegmentRow(SQLModel, table=True):
    """One utterance of one speaker in one call."""

    __tablename__ = "transcript_segments"
    __table_args__ = (
        # Deduplication: a redelivered segment can never make a second row.
        UniqueConstraint("tenant", "segment_id", name="uq_transcript_segment"),
        Index("ix_transcript_call", "tenant", "call_id", "start_s"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant: str
    call_id: str
    segment_id: str
    speaker: str
    text: str = Field(sa_column=Column(Text, nullable=False))
    start_s: float
    end_s: float
    final: bool = True
    #: Fixed-width UTC ISO 8601 text: sorts in time order on every backend.
    occurred_at: str

    @staticmethod
    def values_of(segment: TranscriptSegment) -> dict[str, Any]:
        """The row's columns (all but the database's ``id``) for ``segment``."""
        copied = {"tenant", "call_id", "segment_id", "text", "start_s", "end_s", "final"}
        return {
            **segment.model_dump(include=copied),
            "speaker": segment.speaker.value,
            "occurred_at": iso_timestamp(segment.occurred_at),
        }


SEGMENTS = cast(Table, getattr(SegmentRow, "__table__"))  # noqa: B009 - untyped in SQLModel
