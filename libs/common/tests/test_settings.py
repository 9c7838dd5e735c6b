"""Settings come from VOICEMESH_* variables, and secrets never show."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from voicemesh.common import ServiceSettings, Vertical


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEMESH_NATS_URL", "nats://a:1, nats://b:2")
    monkeypatch.setenv("VOICEMESH_NATS_PASSWORD", "hunter2")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u:pw@db/vm")
    monkeypatch.setenv("VOICEMESH_TENANT", "acme")
    monkeypatch.setenv("VOICEMESH_VERTICAL", "healthcare")
    monkeypatch.setenv("VOICEMESH_LOG_LEVEL", "debug")
    settings = ServiceSettings()
    assert settings.nats_urls == ["nats://a:1", "nats://b:2"]
    assert settings.database_url.get_secret_value().startswith("postgresql+asyncpg://")
    assert settings.log_level == "DEBUG"
    assert "hunter2" not in repr(settings) and "pw@" not in repr(settings)
    registry = settings.tenant_registry()
    assert registry.ids() == ["acme"]
    tenant = registry.get("acme")
    assert tenant is not None and tenant.vertical is Vertical.HEALTHCARE
    assert tenant.vertical.handles_phi


def test_default_tenants_are_one_demo_tenant_per_vertical() -> None:
    registry = ServiceSettings().tenant_registry()
    assert len(registry) == len(Vertical)
    assert "demo-behavioral-health" in registry


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VOICEMESH_TENANT", "Bad.Tenant"),
        ("VOICEMESH_LOG_LEVEL", "chatty"),
        ("VOICEMESH_HTTP_PORT", "70000"),
        ("VOICEMESH_TENANTS", "acme:plumbing"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises((ValidationError, ValueError)):
        ServiceSettings().tenant_registry()


def test_unknown_tenant_without_vertical_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEMESH_TENANT", "nobody")
    with pytest.raises(ValueError, match="nobody"):
        ServiceSettings().tenant_registry()
