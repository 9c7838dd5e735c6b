"""Tenant API keys for the services' HTTP APIs.

Keys come from ``VOICEMESH_API_KEYS`` (``tenant:key,tenant:key``), from a file named by
``VOICEMESH_API_KEYS_FILE`` with one ``tenant:key`` per line (a mounted Kubernetes Secret),
or from both. Every service with an HTTP API mixes ``ApiKeySettings`` into its settings
and loads its keys with ``ApiKeys.from_settings(settings)``: one loader for every API.
A request presents ``Authorization: Bearer <key>``; the key must belong to the tenant named
in the path. Comparison is constant-time; keys are never logged.

The key is checked before the tenant is looked up, so a caller without a key learns nothing
about which tenants exist: 401 without a valid key, 403 for a key of another tenant (served
here or not), and 404 only to the holder of a tenant's own key when this service does not
serve that tenant.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import Header, HTTPException, status
from fastapi import Path as PathParam
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from voicemesh.common.contracts.tenancy import TENANT_ID_PATTERN, TenantRegistry

__all__ = ["ApiKeySettings", "ApiKeys", "authorize_tenant", "tenant_guard"]


class ApiKeySettings(BaseSettings):
    """The API key fields, mixed into the settings of every service with an HTTP API.

    ``class CrmSettings(ServiceSettings, ApiKeySettings)``; both fields are optional, and
    keys from both are accepted.
    """

    model_config = SettingsConfigDict(
        env_prefix="VOICEMESH_", extra="ignore", populate_by_name=True
    )

    api_keys: SecretStr = Field(
        default=SecretStr(""), description="'tenant:key,...' keys for the HTTP API"
    )
    api_keys_file: Path | None = Field(
        default=None, description="a file with one 'tenant:key' per line (a mounted Secret)"
    )


class ApiKeys:
    """Which API keys open which tenant. Stores only SHA-256 digests of the keys."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._digests: dict[str, list[bytes]] = {}
        for tenant, key in pairs:
            if len(key) < 16:
                raise ValueError(f"the API key for tenant {tenant!r} is shorter than 16 characters")
            self._digests.setdefault(tenant, []).append(hashlib.sha256(key.encode()).digest())

    @classmethod
    def parse(cls, spec: str) -> ApiKeys:
        pairs = []
        for item in filter(None, (p.strip() for p in spec.replace("\n", ",").split(","))):
            tenant, sep, key = item.partition(":")
            if not sep or not key:
                raise ValueError("API keys are 'tenant:key' entries")
            pairs.append((tenant.strip(), key.strip()))
        return cls(pairs)

    @classmethod
    def from_settings(cls, settings: ApiKeySettings) -> ApiKeys:
        """The keys of ``settings.api_keys`` and of the file ``settings.api_keys_file`` names."""
        spec = settings.api_keys.get_secret_value()
        if settings.api_keys_file is not None:
            spec += "," + settings.api_keys_file.read_text()
        return cls.parse(spec)

    def allows(self, tenant: str, key: str) -> bool:
        digest = hashlib.sha256(key.encode()).digest()
        return any(hmac.compare_digest(digest, d) for d in self._digests.get(tenant, []))

    def tenants_of(self, key: str) -> set[str]:
        """The tenants ``key`` opens (none for a forged key); every digest is compared."""
        digest = hashlib.sha256(key.encode()).digest()
        return {
            tenant
            for tenant, digests in self._digests.items()
            if sum(hmac.compare_digest(digest, d) for d in digests)
        }


def authorize_tenant(
    keys: ApiKeys, tenants: TenantRegistry, tenant: str, authorization: str | None
) -> str:
    """Check ``Authorization: Bearer <key>`` for ``tenant``, then that it is served here.

    401 without a bearer key or with a key that opens no tenant, 403 for a key of another
    tenant, 404 (to the tenant's own key only) for a tenant this service does not serve.
    """
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("missing bearer API key")
    opened = keys.tenants_of(key.strip())
    if not opened:
        raise _unauthorized("invalid API key")
    if tenant not in opened:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this key does not open this tenant")
    if tenant not in tenants:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown tenant {tenant!r}")
    return tenant


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"}
    )


def tenant_guard(keys: ApiKeys, tenants: TenantRegistry) -> Callable[..., Awaitable[str]]:
    """A FastAPI dependency for routes with a ``{tenant}`` path parameter.

    ``authorize_tenant`` on the path's tenant and the request's key; returns the tenant id.
    """

    async def guard(
        tenant: str = PathParam(pattern=TENANT_ID_PATTERN),
        authorization: str | None = Header(default=None),
    ) -> str:
        return authorize_tenant(keys, tenants, tenant, authorization)

    return guard
