"""The audit service's read API: records by call and by time range, and chain verification.

Every route is under ``/v1/{tenant}`` and needs that tenant's API key.
"""

# No ``from __future__ import annotations``: FastAPI reads these route signatures at run
# time, including the tenant dependency alias defined inside ``audit_router``.

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import BaseModel

from voicemesh.audit.models import AuditRecord
from voicemesh.audit.store import AuditStore, RecordQuery
from voicemesh.audit.verify import verify_chain
from voicemesh.common.contracts.events import CALL_ID_PATTERN
from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.common.runtime.auth import ApiKeys, tenant_guard

__all__ = ["AuditRecordOut", "audit_router"]

MAX_PAGE = 1000


class AuditRecordOut(BaseModel):
    seq: int
    event_id: str
    type: str
    call_id: str | None
    source: str
    subject: str
    occurred_at: str
    recorded_at: str
    event: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, row: AuditRecord) -> "AuditRecordOut":
        shared = row.model_dump(include=set(cls.model_fields))
        return cls(**shared, type=row.event_type, event=json.loads(row.payload))


class AuditPage(BaseModel):
    tenant: str
    records: list[AuditRecordOut]
    next_after_seq: int | None


class VerifyOut(BaseModel):
    tenant: str
    ok: bool
    rows: int
    problem: str
    first_bad_seq: int | None


def audit_router(store: AuditStore, keys: ApiKeys, tenants: TenantRegistry) -> APIRouter:
    router = APIRouter(prefix="/v1/{tenant}", tags=["audit"])
    Tenant = Annotated[str, Depends(tenant_guard(keys, tenants))]

    async def page(query: RecordQuery) -> AuditPage:
        rows = await store.records(query)
        full = len(rows) == query.limit
        return AuditPage(
            tenant=query.tenant,
            records=[AuditRecordOut.of(r) for r in rows],
            next_after_seq=rows[-1].seq if rows and full else None,
        )

    @router.get("/audit", summary="Audit records, filtered by call, type and time range")
    async def list_records(
        tenant: Tenant,
        call_id: Annotated[str | None, Query(pattern=CALL_ID_PATTERN)] = None,
        since: Annotated[datetime | None, Query(description="occurred at or after")] = None,
        until: Annotated[datetime | None, Query(description="occurred before")] = None,
        type: Annotated[str | None, Query(max_length=64)] = None,
        after_seq: Annotated[int, Query(ge=0, description="page after this seq")] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> AuditPage:
        if since is not None and until is not None and since >= until:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "'since' must be before 'until'")
        return await page(
            RecordQuery(tenant, call_id, since, until, type, after_seq=after_seq, limit=limit)
        )

    @router.get("/calls/{call_id}/audit", summary="Every audit record of one call, in order")
    async def call_records(
        tenant: Tenant,
        call_id: Annotated[str, Path(pattern=CALL_ID_PATTERN)],
        after_seq: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    ) -> AuditPage:
        return await page(RecordQuery(tenant, call_id, after_seq=after_seq, limit=limit))

    @router.get("/audit/verify", summary="Walk the tenant's hash chain")
    async def verify(tenant: Tenant) -> VerifyOut:
        report = await verify_chain(store.db, tenant)
        return VerifyOut(
            tenant=tenant,
            ok=report.ok,
            rows=report.rows,
            problem=report.problem,
            first_bad_seq=report.first_bad_seq,
        )

    return router
