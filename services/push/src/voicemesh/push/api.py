"""The device API: ``/v1/{tenant}/devices``, guarded by the tenant's API key.

An unreachable database answers 503: the service skeleton maps ``UnavailableError``.

(No ``from __future__ import annotations``: FastAPI resolves the local ``Tenant``
dependency alias at runtime.)
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.common.runtime.auth import ApiKeys, tenant_guard
from voicemesh.common.runtime.ratelimit import SlidingWindowLimiter, too_many_requests
from voicemesh.push.devices import TOKEN_PATTERN, DeviceRecord, DeviceRegistry

__all__ = ["DeviceIn", "DeviceOut", "device_router"]


class DeviceIn(BaseModel):
    """A PushKit token the app got from ``pushRegistry(_:didUpdate:for:)``."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)
    token: str = Field(pattern=TOKEN_PATTERN, description="hex, 64 to 200 digits")
    bundle_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,250}$")
    environment: Literal["sandbox", "production"] = "production"
    platform: Literal["ios"] = "ios"


class DeviceOut(BaseModel):
    # What the API shows of a ``DeviceRecord``: all but the tenant.
    model_config = ConfigDict(from_attributes=True)

    user_id: str
    token: str
    bundle_id: str
    environment: str
    platform: str
    active: bool
    registered_at_ms: int
    deactivated_at_ms: int | None
    deactivated_reason: str | None

    @classmethod
    def of(cls, record: DeviceRecord) -> "DeviceOut":
        return cls.model_validate(record)


def device_router(
    registry: DeviceRegistry,
    keys: ApiKeys,
    tenants: TenantRegistry,
    limiter: SlidingWindowLimiter | None = None,
) -> APIRouter:
    """The device routes; ``limiter`` caps registrations per tenant (429 + Retry-After)."""
    router = APIRouter(prefix="/v1/{tenant}/devices", tags=["devices"])
    Tenant = Annotated[str, Depends(tenant_guard(keys, tenants))]

    @router.post("", status_code=status.HTTP_201_CREATED, summary="Register a VoIP token")
    async def register(tenant: Tenant, body: DeviceIn) -> DeviceOut:
        if limiter is not None and not (decision := await limiter.hit(tenant)).allowed:
            raise too_many_requests(limiter, decision)
        record = await registry.register(
            tenant,
            body.user_id,
            body.token,
            bundle_id=body.bundle_id,
            environment=body.environment,
            platform=body.platform,
        )
        return DeviceOut.of(record)

    @router.get("", summary="List a tenant's devices, or one user's")
    async def list_devices(
        tenant: Tenant, user_id: Annotated[str | None, Query(max_length=128)] = None
    ) -> list[DeviceOut]:
        return [DeviceOut.of(d) for d in await registry.list_devices(tenant, user_id)]

    @router.delete(
        "/{token}", status_code=status.HTTP_204_NO_CONTENT, summary="Unregister a VoIP token"
    )
    async def unregister(
        tenant: Tenant, token: Annotated[str, PathParam(pattern=TOKEN_PATTERN)]
    ) -> Response:
        if not await registry.unregister(tenant, token):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
