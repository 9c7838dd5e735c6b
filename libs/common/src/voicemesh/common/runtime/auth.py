"""Tenant API keys for the services' HTTP APIs.

Keys come from ``VOICEMESH_API_KEYS`` (``tenant:key,tenant:key``) or from a file named by
``VOICEMESH_API_KEYS_FILE`` with one ``tenant:key`` per line (a mounted Kubernetes Secret).
A request presents ``Authorization: Bearer <key>``; the key must belong to the tenant named
in the path. Comparison is constant-time; keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import Header, HTTPException, status
from fastapi import Path as PathParam

from voicemesh.common.contracts.tenancy import TENANT_ID_PATTERN, TenantRegistry

__all__ = ["ApiKeys", "tenant_guard"]


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
    def from_env(cls, environ: dict[str, str] | None = None) -> ApiKeys:
        env = os.environ if environ is None else environ
        spec = env.get("VOICEMESH_API_KEYS", "")
        if path := env.get("VOICEMESH_API_KEYS_FILE"):
            spec += "," + Path(path).read_text()
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
