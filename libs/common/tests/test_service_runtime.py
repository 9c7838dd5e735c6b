"""Every service process: /healthz follows the broker, /metrics serves, SIGTERM exits cleanly."""

from __future__ import annotations

import signal

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.common.contracts import streams
from voicemesh.testkit.embedded import EmbeddedServer
from voicemesh.testkit.fixtures import ProcessTracker, wait_until

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


async def test_healthz_is_503_while_nats_is_down(
    nats_server: EmbeddedServer,
    nats: NatsClient,
    nats_url: str,
    sqlite_url: str,
    processes: ProcessTracker,
) -> None:
    await streams.apply(nats.jetstream())
    env = {"VOICEMESH_NATS_URL": nats_url, "VOICEMESH_DATABASE_URL": sqlite_url}
    proc = processes.python_module("voicemesh.crm", env)
    await proc.wait_healthy()
    url = f"http://127.0.0.1:{proc.http_port}/healthz"
    async with httpx.AsyncClient(timeout=5) as client:
        nats_server.stop()
        await wait_until(lambda: _status(client, url, 503), timeout=10, what="503 with NATS down")
        nats_server.restart()
        await wait_until(lambda: _status(client, url, 200), timeout=15, what="200 after restart")
    proc.signal(signal.SIGTERM)


async def _status(client: httpx.AsyncClient, url: str, expected: int) -> bool:
    return (await client.get(url)).status_code == expected
