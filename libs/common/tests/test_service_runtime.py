"""Every service process: /readyz follows the broker, /livez the process, /metrics serves,
SIGTERM exits cleanly."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.common import MeshService, ServiceSettings
from voicemesh.common.contracts import streams
from voicemesh.testkit.embedded import EmbeddedServer
from voicemesh.testkit.fixtures import ProcessTracker, wait_until

METRICS_TOKEN = "metrics-scrape-token-0123456789"
SERVICES = ["gateway", "push", "agent", "crm", "calendar", "sms", "audit", "transcript"]


@pytest.mark.parametrize("service", SERVICES)
async def test_service_serves_health_and_metrics_and_stops_on_sigterm(
    service: str,
    nats: NatsClient,
    nats_url: str,
    redis_url: str,
    sqlite_url: str,
    processes: ProcessTracker,
) -> None:
    await streams.apply(nats.jetstream())  # services bind to provisioned durable consumers
    env = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_DATABASE_URL": sqlite_url,
    }
    proc = processes.python_module(f"voicemesh.{service}", env)
    await proc.wait_healthy()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proc.http_port}") as client:
        health = await client.get("/healthz")
        assert health.json() == {"service": service, "broker": "connected"}
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "voicemesh_broker_connected 1.0" in metrics.text
    assert proc.terminate(timeout=15) == 0, proc.log()[-2000:]
    assert "stopped" in proc.log()


async def test_readiness_follows_nats_and_liveness_does_not(
    nats_server: EmbeddedServer,
    nats: NatsClient,
    nats_url: str,
    sqlite_url: str,
    processes: ProcessTracker,
) -> None:
    """With NATS down the pod leaves the Service (``/readyz`` 503) but is not restarted
    (``/livez`` stays 200); ``/healthz`` answers as ``/readyz`` does."""
    await streams.apply(nats.jetstream())
    env = {"VOICEMESH_NATS_URL": nats_url, "VOICEMESH_DATABASE_URL": sqlite_url}
    proc = processes.python_module("voicemesh.crm", env)
    await proc.wait_healthy()
    base = f"http://127.0.0.1:{proc.http_port}"
    probes = ("/livez", "/readyz", "/healthz")
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        assert await _statuses(client, probes) == dict.fromkeys(probes, 200)
        assert (await client.get("/livez")).json() == {"service": "crm", "alive": True}
        nats_server.stop()
        await wait_until(
            lambda: _status(client, "/readyz", 503), timeout=10, what="503 with NATS down"
        )
        assert await _statuses(client, probes) == {"/livez": 200, "/readyz": 503, "/healthz": 503}
        nats_server.restart()
        await wait_until(lambda: _status(client, "/readyz", 200), timeout=15, what="200 after")
        assert await _statuses(client, probes) == dict.fromkeys(probes, 200)
    proc.signal(signal.SIGTERM)


async def _statuses(client: httpx.AsyncClient, paths: tuple[str, ...]) -> dict[str, int]:
    return {path: (await client.get(path)).status_code for path in paths}


async def _status(client: httpx.AsyncClient, url: str, expected: int) -> bool:
    return (await client.get(url)).status_code == expected


async def test_docs_and_metrics_follow_the_settings() -> None:
    """Public by default (``make run``); closed, or behind a bearer token, when configured."""

    async def statuses(**settings: Any) -> dict[str, int]:
        service = MeshService("probe", ServiceSettings(**settings))
        transport = httpx.ASGITransport(app=service.http)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return {
                path: (await client.get(path, headers=headers)).status_code
                for path, headers in [
                    ("/docs", {}),
                    ("/redoc", {}),
                    ("/openapi.json", {}),
                    ("/metrics", {}),
                    ("/metrics#forged", {"Authorization": "Bearer not-the-token-0123456789"}),
                    ("/metrics#token", {"Authorization": f"Bearer {METRICS_TOKEN}"}),
                ]
            }

    every = ["/docs", "/redoc", "/openapi.json", "/metrics", "/metrics#forged", "/metrics#token"]
    assert await statuses() == dict.fromkeys(every, 200)
    closed = await statuses(public_docs=False, public_metrics=False)
    assert closed == dict.fromkeys(every, 404)
    scraped = await statuses(public_docs=False, public_metrics=False, metrics_token=METRICS_TOKEN)
    assert scraped == {
        **dict.fromkeys(["/docs", "/redoc", "/openapi.json"], 404),
        "/metrics": 401,
        "/metrics#forged": 401,
        "/metrics#token": 200,
    }
