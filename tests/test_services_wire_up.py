"""Every service wires up as a voicemesh service: settings from the environment, then an app
that serves ``/healthz`` and ``/metrics`` under the service's own name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from voicemesh import agent, audit, calendar, crm, gateway, push, sms, transcript
from voicemesh.common import MeshService, ServiceSettings

SERVICES: list[tuple[str, type[ServiceSettings], Callable[[Any], MeshService]]] = [
    ("agent", agent.AgentSettings, agent.create_app),
    ("audit", audit.AuditSettings, audit.create_app),
    ("calendar", calendar.CalendarSettings, calendar.create_app),
    ("crm", crm.CrmSettings, crm.create_app),
    ("gateway", gateway.GatewaySettings, gateway.create_app),
    ("push", push.PushSettings, push.create_app),
    ("sms", sms.SmsSettings, sms.create_app),
    ("transcript", transcript.TranscriptSettings, transcript.create_app),
]


@pytest.mark.parametrize(
    ("name", "settings_type", "create_app"), SERVICES, ids=[s[0] for s in SERVICES]
)
def test_service_wires_up_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    settings_type: type[ServiceSettings],
    create_app: Callable[[Any], MeshService],
) -> None:
    monkeypatch.setenv("VOICEMESH_HTTP_PORT", "9999")
    monkeypatch.setenv("VOICEMESH_NATS_URL", "nats://nats-0:4222,nats://nats-1:4222")
    settings = settings_type()
    assert settings.service_name == name
    assert settings.http_port == 9999
    assert settings.nats_urls == ["nats://nats-0:4222", "nats://nats-1:4222"]
    service = create_app(settings)
    assert {"/healthz", "/metrics"} <= {getattr(r, "path", "") for r in service.http.routes}
    assert service.name == name
