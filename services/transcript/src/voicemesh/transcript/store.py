"""Storing and reading transcript segments.

A segment is stored once per ``(tenant, segment_id)``: a redelivery changes nothing, and a
final version replaces a partial one (never the other way round). A call's transcript is
its segments in speaking order (start time, then end time, then arrival).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from voicemesh.common.contracts.errors import UnavailableError
from voicemesh.common.contracts.events import TranscriptSegment
from voicemesh.common.runtime.db import Database
from voicemesh.transcript.models import SEGMENTS, SegmentRow

__all__ = ["CallSummary", "SearchQuery", "TranscriptStore"]


@dataclass(frozen=True)
class CallSummary:
    call_id: str
    segments: int
    first_at: str
    last_at: str


@dataclass(frozen=True)
class SearchQuery:
    tenant: str
    text: str
    call_id: str | None = None
    speaker: str | None = None
    after_id: int = 0
    limit: int = 50


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class TranscriptStore:
    """The transcript table of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, segment: TranscriptSegment) -> bool:
        """Store ``segment``; ``False`` if an equal or more final version was already stored."""
        values = SegmentRow.values_of(segment)
        insert = sqlite_insert if self.db.is_sqlite else pg_insert
        stmt = insert(SEGMENTS).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant", "segment_id"],
            set_={k: stmt.excluded[k] for k in ("text", "start_s", "end_s", "final", "speaker")},
            # Only a final version may replace a partial one: redeliveries and stale
            # partials arriving late change nothing.
            where=(SEGMENTS.c.final.is_(False)) & (stmt.excluded.final.is_(True)),
        )
        try:
            async with self.db.session() as session, session.begin():
                result = await session.execute(stmt)
        except (DBAPIError, OSError) as exc:
            # ``from None``: a driver message can quote the row, and the text may be PHI.
            raise UnavailableError(f"transcript database: {type(exc).__name__}") from None
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def _all(self, stmt: object) -> list[SegmentRow]:
        try:
            async with self.db.session() as session:
                return list((await session.execute(stmt)).scalars())  # type: ignore[call-overload]
        except (DBAPIError, OSError) as exc:
            raise UnavailableError(f"transcript database: {type(exc).__name__}") from None

    async def call_segments(
        self, tenant: str, call_id: str, *, include_partial: bool = False
    ) -> list[SegmentRow]:
        stmt = select(SegmentRow).where(SEGMENTS.c.tenant == tenant, SEGMENTS.c.call_id == call_id)
        if not include_partial:
            stmt = stmt.where(SEGMENTS.c.final.is_(True))
        stmt = stmt.order_by(SEGMENTS.c.start_s, SEGMENTS.c.end_s, SEGMENTS.c.id)
        return await self._all(stmt)

    async def search(self, query: SearchQuery) -> list[SegmentRow]:
        pattern = f"%{_escape_like(query.text)}%"
        stmt = select(SegmentRow).where(
            SEGMENTS.c.tenant == query.tenant,
            SEGMENTS.c.id > query.after_id,
            SEGMENTS.c.text.ilike(pattern, escape="\\"),
        )
        if query.call_id is not None:
            stmt = stmt.where(SEGMENTS.c.call_id == query.call_id)
        if query.speaker is not None:
            stmt = stmt.where(SEGMENTS.c.speaker == query.speaker)
        stmt = stmt.order_by(SEGMENTS.c.id).limit(query.limit)
        return await self._all(stmt)

    async def calls(self, tenant: str, *, limit: int = 100) -> list[CallSummary]:
        stmt = (
            select(
                SEGMENTS.c.call_id,
                func.count(),
                func.min(SEGMENTS.c.occurred_at),
                func.max(SEGMENTS.c.occurred_at),
            )
            .where(SEGMENTS.c.tenant == tenant)
            .group_by(SEGMENTS.c.call_id)
            .order_by(func.max(SEGMENTS.c.occurred_at).desc())
            .limit(limit)
        )
        try:
            async with self.db.session() as session:
                rows = (await session.execute(stmt)).all()
        except (DBAPIError, OSError) as exc:
            raise UnavailableError(f"transcript database: {type(exc).__name__}") from None
        return [CallSummary(r[0], int(r[1]), str(r[2]), str(r[3])) for r in rows]
