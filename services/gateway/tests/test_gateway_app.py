"""The gateway service wires up as a voicemesh service."""

from __future__ import annotations

import pytest

from voicemesh.gateway import GatewaySettings, create_app


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEMESH_HTTP_PORT", "9999")
    monkeypatch.setenv("VOICEMESH_NATS_URL", "nats://nats-0:4222,nats://nats-1:4222")
    settings = GatewaySettings()
    assert settings.service_name == "gateway"
    assert settings.http_port == 9999
    assert settings.nats_urls == ["nats://nats-0:4222", "nats://nats-1:4222"]


def test_app_serves_health_and_metrics() -> None:
    service = create_app(GatewaySettings())
    paths = {getattr(route, "path", "") for route in service.http.routes}
    assert {"/healthz", "/metrics"} <= paths
    assert service.name == "gateway"
