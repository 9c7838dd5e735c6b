"""Every service process: /readyz follows the broker, /livez the process, /metrics serves,
SIGTERM exits cleanly and at once, also while the service still waits for an unreachable
NATS at startup (Kubernetes would otherwise wait out the grace period, then SIGKILL it)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.common import MeshService, ServiceSettings
from voicemesh.common.contracts import streams
from voicemesh.testkit.embedded import EmbeddedServer, free_port
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess, wait_until

METRICS_TOKEN = "metrics-scrape-token-0123456789"
SERVICES = ["gateway", "push", "agent", "crm", "calendar", "sms", "audit", "transcript"]
#: How long a service may take from SIGTERM to its exit.
EXIT_WITHIN_S = 5.0


def _start(
    processes: ProcessTracker, service: str, nats_url: str, redis_url: str, sqlite_url: str
) -> ServiceProcess:
    env = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_DATABASE_URL": sqlite_url,
    }
    return processes.python_module(f"voicemesh.{service}", env)


def _terminate_promptly(proc: ServiceProcess) -> None:
    """SIGTERM: the process exits 0 within ``EXIT_WITHIN_S`` (else it is SIGKILLed)."""
    began = time.monotonic()
    code = proc.terminate(timeout=EXIT_WITHIN_S)
    took = time.monotonic() - began
    assert code == 0, f"exit {code} after {took:.1f} s:\n{proc.log()[-3000:]}"


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
    proc = _start(processes, service, nats_url, redis_url, sqlite_url)
    await proc.wait_healthy()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proc.http_port}") as client:
        health = await client.get("/healthz")
        assert health.json() == {"service": service, "broker": "connected"}
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "voicemesh_broker_connected 1.0" in metrics.text
    _terminate_promptly(proc)
    assert "stopped" in proc.log()


@pytest.mark.parametrize("service", SERVICES)
async def test_sigterm_while_nats_is_unreachable_exits_at_once(
    service: str, redis_url: str, sqlite_url: str, processes: ProcessTracker
) -> None:
    """gateway and push connect to NATS in their startup hooks, the others in their broker's
    start: wherever the start waits, SIGTERM ends it, closes what was opened, exits 0."""
    nowhere = f"nats://127.0.0.1:{free_port()}"  # nothing listens: connecting retries forever
    proc = _start(processes, service, nowhere, redis_url, sqlite_url)
    await wait_until(lambda: "starting; NATS" in proc.log(), timeout=30, what="the start")
    await asyncio.sleep(1.0)  # well into the connection attempts
    assert proc.alive(), proc.log()[-2000:]

    _terminate_promptly(proc)

    log = proc.log()
    assert "stopped while starting" in log
    assert "shutdown hook" not in log  # closing what the hooks opened went cleanly


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


async def test_an_abandoned_start_ends_even_when_a_hook_loses_a_cancellation() -> None:
    """A connection loop that swallows one cancellation (as nats-py's does when the attempt
    it waits for fails at that moment) still ends: the start is cancelled until it ends, and
    what the hooks had opened is closed."""
    service = MeshService("probe", ServiceSettings())
    events: list[str] = []

    @service.on_startup
    async def connect_forever() -> None:
        events.append("opened")
        lost = 0
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                lost += 1
                if lost > 1:
                    events.append(f"cancelled {lost} times")
                    raise

    @service.on_shutdown
    async def close() -> None:
        events.append("closed")

    starting = asyncio.create_task(service.start())
    await wait_until(lambda: events, timeout=5, what="the hook")
    service.abandon_start()
    await asyncio.wait_for(starting, timeout=2)

    assert events == ["opened", "cancelled 2 times", "closed"]
    assert not await service.connected()
    await service.start()  # abandoned for good: nothing opens again
    assert events == ["opened", "cancelled 2 times", "closed"]


async def test_sigterm_before_the_server_runs_exits_at_once(processes: ProcessTracker) -> None:
    """From ``setup_process`` on (settings read, ``create_app`` building the service), a
    SIGTERM exits 0 at once: nothing is open yet."""
    building = (
        "import sys, time\n"
        "from voicemesh.common import ServiceSettings, setup_process\n"
        "setup_process('probe', ServiceSettings())\n"
        "print('building', flush=True)\n"
        "time.sleep(60)\n"
        "sys.exit(3)\n"
    )
    proc = processes.command([sys.executable, "-c", building], {}, name="building")
    await wait_until(lambda: "building" in proc.log(), timeout=30, what="setup_process")
    _terminate_promptly(proc)
