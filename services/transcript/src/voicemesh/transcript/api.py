"""The transcript service's read API: a call's transcript, exports and search.

Every route is under ``/v1/{tenant}`` and needs that tenant's API key. For healthcare-class
tenants the search text is kept out of logs and span attributes, like the transcripts.
"""

# No ``from __future__ import annotations``: FastAPI reads these route signatures at run
# time, including the tenant dependency alias defined inside ``transcript_router``.

import json
import logging
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, status
from opentelemetry.trace import Tracer
from pydantic import BaseModel

from voicemesh.common.contracts.events import CALL_ID_PATTERN, Speaker
from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.common.runtime.auth import ApiKeys, tenant_guard
from voicemesh.transcript.export import as_json, as_text, as_webvtt, segment_json
from voicemesh.transcript.models import SegmentRow
from voicemesh.transcript.store import SearchQuery, TranscriptStore

__all__ = ["ExportFormat", "transcript_router"]

log = logging.getLogger(__name__)

MAX_HITS = 200


class ExportFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    VTT = "vtt"


class CallOut(BaseModel):
    call_id: str
    segments: int
    first_at: str
    last_at: str


class SearchHit(BaseModel):
    call_id: str
    segment_id: str
    speaker: str
    text: str
    start_s: float
    end_s: float
    occurred_at: str


class SearchOut(BaseModel):
    tenant: str
    hits: list[SearchHit]
    next_after_id: int | None


def transcript_router(
    store: TranscriptStore, keys: ApiKeys, tenants: TenantRegistry, tracer: Tracer
) -> APIRouter:
    router = APIRouter(prefix="/v1/{tenant}", tags=["transcripts"])
    Tenant = Annotated[str, Depends(tenant_guard(keys, tenants))]
    CallId = Annotated[str, Path(pattern=CALL_ID_PATTERN)]

    def handles_phi(tenant: str) -> bool:
        known = tenants.get(tenant)
        return known is None or known.vertical.handles_phi

    async def segments(tenant: str, call_id: str, include_partial: bool) -> list[SegmentRow]:
        rows = await store.call_segments(tenant, call_id, include_partial=include_partial)
        if not rows:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no transcript for this call")
        return rows

    @router.get("/calls", summary="Calls with a transcript, most recent first")
    async def list_calls(
        tenant: Tenant, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[CallOut]:
        return [CallOut(**vars(c)) for c in await store.calls(tenant, limit=limit)]

    @router.get("/calls/{call_id}/transcript", summary="A call's transcript, in speaking order")
    async def get_transcript(
        tenant: Tenant, call_id: CallId, include_partial: bool = False
    ) -> dict[str, Any]:
        return as_json(tenant, call_id, await segments(tenant, call_id, include_partial))

    @router.get(
        "/calls/{call_id}/transcript/export",
        summary="Download a call's transcript as text, JSON or WebVTT",
        response_class=Response,
    )
    async def export(
        tenant: Tenant, call_id: CallId, format: ExportFormat = ExportFormat.TEXT
    ) -> Response:
        rows = await segments(tenant, call_id, False)
        disposition = {"Content-Disposition": f'attachment; filename="{call_id}.{format.value}"'}
        if format is ExportFormat.VTT:
            return Response(as_webvtt(rows), media_type="text/vtt", headers=disposition)
        if format is ExportFormat.JSON:
            body = json.dumps(as_json(tenant, call_id, rows), ensure_ascii=False)
            return Response(body, media_type="application/json", headers=disposition)
        return Response(as_text(rows), media_type="text/plain", headers=disposition)

    @router.get("/transcripts/search", summary="Segments of the tenant's calls containing q")
    async def search(
        tenant: Tenant,
        q: Annotated[str, Query(min_length=1, max_length=200, description="text to find")],
        call_id: Annotated[str | None, Query(pattern=CALL_ID_PATTERN)] = None,
        speaker: Speaker | None = None,
        after_id: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_HITS)] = 50,
    ) -> SearchOut:
        phi = handles_phi(tenant)
        with tracer.start_as_current_span("transcript.search") as span:
            span.set_attribute("voicemesh.tenant", tenant)
            span.set_attribute("transcript.query_chars", len(q))
            if not phi:
                # Useful when a search finds nothing; never for healthcare-class tenants.
                span.set_attribute("transcript.query", q)
                log.debug("search in %s for %r", tenant, q)
            query = SearchQuery(
                tenant, q, call_id, speaker.value if speaker else None, after_id, limit
            )
            rows = await store.search(query)
            span.set_attribute("transcript.hits", len(rows))
        hits = [SearchHit(call_id=r.call_id, **segment_json(r)) for r in rows]
        last = rows[-1].id if rows and len(rows) == limit else None
        return SearchOut(tenant=tenant, hits=hits, next_after_id=last)

    return router
