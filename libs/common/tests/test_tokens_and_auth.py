"""Call tokens and tenant API keys: the credentials every HTTP API checks."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import SecretStr

from voicemesh.common import TenantRegistry, Unauthorized
from voicemesh.common.runtime.auth import ApiKeys, ApiKeySettings, tenant_guard
from voicemesh.common.runtime.db import async_url
from voicemesh.common.runtime.tokens import issue_call_token, verify_call_token

SECRET = "s" * 40


def test_call_token_round_trip_and_binding() -> None:
    token, claims = issue_call_token(SECRET, "acme", "c1", user_id="u1")
    verified = verify_call_token(SECRET, token, tenant="acme", call_id="c1")
    assert verified == claims
    with pytest.raises(Unauthorized, match="another tenant"):
        verify_call_token(SECRET, token, tenant="other")
    with pytest.raises(Unauthorized, match="another call"):
        verify_call_token(SECRET, token, call_id="c2")


def test_forged_and_expired_tokens_are_refused() -> None:
    token, _ = issue_call_token(SECRET, "acme", "c1")
    with pytest.raises(Unauthorized, match="invalid"):
        verify_call_token("x" * 40, token)
    with pytest.raises(Unauthorized, match="invalid"):
        verify_call_token(SECRET, token[:-4] + "AAAA")
    old, _ = issue_call_token(SECRET, "acme", "c1", ttl_s=10, now=time.time() - 60)
    with pytest.raises(Unauthorized, match="expired"):
        verify_call_token(SECRET, old)
    with pytest.raises(ValueError, match="32"):
        issue_call_token("short", "acme", "c1")


async def test_tenant_guard_authenticates_before_it_looks_up_the_tenant() -> None:
    """Whoever holds no key for a tenant learns nothing about which tenants exist."""
    keys = ApiKeys.parse(
        "acme:acme-key-0123456789, other:other-key-0123456789, gone:gone-key-0123456789"
    )
    guard = tenant_guard(keys, TenantRegistry.parse("acme:salon,other:legal"))
    app = FastAPI()

    @app.get("/v1/{tenant}/ping")
    async def ping(tenant: str = Depends(guard)) -> dict[str, str]:
        return {"tenant": tenant}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def status(tenant: str, key: str | None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
            return (await client.get(f"/v1/{tenant}/ping", headers=headers)).status_code

        ok = await client.get(
            "/v1/acme/ping", headers={"Authorization": "Bearer acme-key-0123456789"}
        )
        assert ok.json() == {"tenant": "acme"}
        for tenant in ("acme", "nobody"):  # a served tenant and one that does not exist
            assert await status(tenant, None) == 401
            assert await status(tenant, "forged-key-0123456789") == 401
            assert await status(tenant, "other-key-0123456789") == 403
        basic = {"Authorization": "Basic acme-key-0123456789"}
        assert (await client.get("/v1/acme/ping", headers=basic)).status_code == 401
        # Only the holder of a tenant's own key hears that this service does not serve it.
        assert await status("gone", "gone-key-0123456789") == 404
        assert await status("BAD!", "other-key-0123456789") == 422
        # A trailing newline is no tenant id (the path pattern matches the whole id).
        assert await status("acme%0A", "acme-key-0123456789") == 422


def test_short_keys_and_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="shorter"):
        ApiKeys.parse("acme:short")
    with pytest.raises(ValueError, match="tenant:key"):
        ApiKeys.parse("acme")


def test_keys_come_from_the_environment_the_keys_file_or_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text("acme:file-key-0123456789\nother:other-file-key-0123456789\n")
    both = ApiKeys.from_settings(
        ApiKeySettings(api_keys=SecretStr("acme:env-key-0123456789"), api_keys_file=keys_file)
    )
    assert both.allows("acme", "env-key-0123456789") and both.allows("acme", "file-key-0123456789")
    assert both.allows("other", "other-file-key-0123456789")
    assert not both.allows("other", "file-key-0123456789")
    # A service's settings read the same two variables from the environment.
    monkeypatch.setenv("VOICEMESH_API_KEYS", "")
    monkeypatch.setenv("VOICEMESH_API_KEYS_FILE", str(keys_file))
    assert ApiKeys.from_settings(ApiKeySettings()).allows("acme", "file-key-0123456789")
    keys_file.write_text("acme:short\n")
    with pytest.raises(ValueError, match="shorter"):
        ApiKeys.from_settings(ApiKeySettings())


def test_database_urls_get_async_drivers() -> None:
    assert async_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert async_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert async_url("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"
