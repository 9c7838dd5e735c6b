"""Settings come from VOICEMESH_* variables, and secrets never show."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from voicemesh.common import CallEnded, EndReason, ServiceSettings, Tenant, Vertical
from voicemesh.common.contracts.tenancy import validate_tenant_id

REPO = Path(__file__).resolve().parents[3]


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


def test_a_trailing_newline_is_no_tenant_id() -> None:
    """``re.match`` with ``$`` accepts ``"acme\\n"``; every tenant check matches the whole id."""
    with pytest.raises(ValueError, match="invalid tenant id"):
        validate_tenant_id("acme\n")
    # pydantic's ``pattern=`` (Rust regex: ``$`` is the end of the text) already refuses it.
    with pytest.raises(ValidationError):
        Tenant(id="acme\n", vertical=Vertical.SALON)
    with pytest.raises(ValidationError):
        CallEnded(tenant="acme\n", call_id="c1", source="test", reason=EndReason.HANGUP)


def test_docs_and_metrics_are_public_locally_and_closed_in_the_manifests() -> None:
    """``make run`` serves /docs and /metrics to anyone; every production env file does not."""
    local = ServiceSettings()
    assert local.public_docs and local.public_metrics and local.metrics_token is None
    # The edge services' settings, and every vertical's agent-pod profile.
    service_envs = [
        REPO / "deploy/k8s/base/edge.env",
        *(REPO / f"deploy/k8s/verticals/{v.value}/profile.env" for v in Vertical),
    ]
    for path in service_envs:
        lines = set(path.read_text().splitlines())
        assert "VOICEMESH_PUBLIC_DOCS=false" in lines, path
        assert "VOICEMESH_PUBLIC_METRICS=false" in lines, path
