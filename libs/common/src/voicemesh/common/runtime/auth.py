"""Tenant API keys for the services' HTTP APIs.

Keys come from ``VOICEMESH_API_KEYS`` (``tenant:key,tenant:key``), from a file named by
``VOICEMESH_API_KEYS_FILE`` with one ``tenant:key`` per line (a mounted Kubernetes Secret),
or from both. Every service with an HTTP API mixes ``ApiKeySettings`` into its settings
and loads its keys with ``ApiKeys.from_settings(settings)``: one loader for every API.
A request presents ``Authorization: Bearer <key>``; the key must belong to the tenant named
in the path. Comparison is constant-time; keys are never logged.
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

__all__ = ["ApiKeySettings", "ApiKeys", "tenant_guard"]


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


def tenant_guard(keys: ApiKeys, tenants: TenantRegistry) -> Callable[..., Awaitable[str]]:
    """A FastAPI dependency for routes with a ``{tenant}`` path parameter.

    404 for a tenant this service does not serve, 401 without a bearer key, 403 for a key
    that does not open this tenant. Returns the tenant id.
    """

    async def guard(
        tenant: str = PathParam(pattern=TENANT_ID_PATTERN),
        authorization: str | None = Header(default=None),
    ) -> str:
        if tenant not in tenants:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown tenant {tenant!r}")
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing bearer API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not keys.allows(tenant, key.strip()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this key does not open this tenant")
        return tenant

    return guard
