"""A gateway process for the tests that call it over real WebRTC, and how its memory grows.

``start_gateway_process`` runs ``python -m voicemesh.gateway`` on a free port as its own
worker (``VOICEMESH_WORKER_URL`` is its own URL), on the test's NATS and Redis, and waits
for ``/healthz``; ``echo_gateway`` puts the echo agent behind it. ``memory_growth_mb``
watches the process's resident memory for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NatsClient

from voicemesh.common.contracts import streams
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess
from voicemesh.testkit.whip import EchoAgent

__all__ = [
    "EchoGateway",
    "echo_gateway",
    "memory_growth_mb",
    "rss_mb",
    "start_gateway_process",
]


async def start_gateway_process(
    processes: ProcessTracker,
    nats_url: str,
    redis_url: str,
    *,
    call_token_secret: str,
    api_keys: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "gateway",
) -> tuple[ServiceProcess, str]:
    """A healthy gateway process and its base URL (``http://127.0.0.1:<port>``); ``env``
    adds to or overrides its settings (``VOICEMESH_WORKER_ID``, ``VOICEMESH_MAX_CALLS``…)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    keys = {"VOICEMESH_API_KEYS": api_keys} if api_keys is not None else {}
    settings = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_CALL_TOKEN_SECRET": call_token_secret,
        "VOICEMESH_WORKER_URL": base,
        **keys,
        **(env or {}),
    }
    gateway = processes.python_module("voicemesh.gateway", settings, name=name, http_port=port)
    await gateway.wait_healthy()
    return gateway, base


@dataclass(frozen=True)
class EchoGateway:
    """A gateway process (at ``url``) with the echo agent answering its calls."""

    agent: EchoAgent
    process: ServiceProcess
    url: str


@contextlib.asynccontextmanager
async def echo_gateway(
    nats: NatsClient,
    nats_url: str,
    redis_url: str,
    processes: ProcessTracker,
    tenant: str,
    *,
    call_token_secret: str,
    api_keys: str | None = None,
) -> AsyncIterator[EchoGateway]:
    """The streams provisioned, an echo agent for ``tenant`` and a gateway process in front
    of it; the agent stops on the way out (its frames stay readable)."""
    await streams.apply(nats.jetstream())
    agent = EchoAgent(nats, tenant)
    await agent.start()
    try:
        process, url = await start_gateway_process(
            processes, nats_url, redis_url, call_token_secret=call_token_secret, api_keys=api_keys
        )
        yield EchoGateway(agent, process, url)
    finally:
        await agent.stop()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (``VmRSS``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for process {pid}")


async def memory_growth_mb(process: ServiceProcess, seconds: float, budget_mb: float) -> float:
    """The most ``process`` grew over ``seconds`` (sampled each second), in MB; an
    ``AssertionError`` as soon as it has grown ``budget_mb`` or more."""
    start, peak = rss_mb(process.pid), 0.0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        peak = max(peak, rss_mb(process.pid) - start)
        assert peak < budget_mb, f"the {process.name} grew {peak:.0f} MB"
        await asyncio.sleep(1.0)
    return peak
