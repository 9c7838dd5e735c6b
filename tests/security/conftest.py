"""One mesh of service processes for the security tests, and where their counts go.

``secure_mesh`` starts a real nats-server (JetStream, streams provisioned), uses the session's
real Redis on a database of its own, and runs all eight services as separate processes with
DEBUG logging, spans exported to the session's OTLP receiver and low per-tenant rate limits.
It is started once for this directory; each test uses its own tenants from ``TENANTS``.

``record_security`` merges a test's counts into ``bench/results/security.json`` (under a
file lock, so tests may run in any order) for the chaos table.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.testkit import results
from voicemesh.testkit.embedded import EmbeddedServer, start_nats
from voicemesh.testkit.fixtures import OtlpReceiver, ProcessTracker, ServiceProcess
from voicemesh.testkit.mesh import nats_client, provision

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "security.json"
SECURITY_TOTALS = ("hostile_inputs", "rejected", "crashes", "server_errors")

SERVICES = ("gateway", "push", "agent", "crm", "calendar", "sms", "audit", "transcript")

# Tenant ids by role: ``a``/``b`` for credential checks, ``limited``/``neighbour`` for rate
# limits, ``media`` for a live call fuzzed on its subjects, ``clinic`` for the PHI call,
# ``fuzz`` for hostile payloads and schemathesis.
TENANTS = {
    "a": "sec-alpha",
    "b": "sec-bravo",
    "limited": "sec-limited",
    "neighbour": "sec-neighbour",
    "media": "sec-media",
    "clinic": "sec-clinic",
    "fuzz": "sec-fuzz",
    # Tools offered to one vertical only are fuzzed on a tenant of that vertical.
    "fuzz_real_estate": "sec-fuzz-estate",
    "fuzz_legal": "sec-fuzz-legal",
    "fuzz_insurance": "sec-fuzz-insurance",
}
VERTICALS = {
    **{role: "salon" for role in TENANTS},
    "clinic": "healthcare",
    "fuzz_real_estate": "real_estate",
    "fuzz_legal": "legal",
    "fuzz_insurance": "insurance",
}

# Low enough to reach in a test, high enough that the other tests never meet them.
CALL_RATE_LIMIT = 6
DEVICE_RATE_LIMIT = 6
RATE_WINDOW_S = 60


@dataclass
class SecureMesh:
    nats_url: str
    redis_url: str
    call_token_secret: str
    api_keys: dict[str, str]  # tenant -> key
    services: dict[str, ServiceProcess]
    started_at: float

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.services[service].http_port}"

    def key(self, role: str) -> str:
        return self.api_keys[TENANTS[role]]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(role)}"}

    def logs(self) -> dict[str, str]:
        return {name: process.log() for name, process in self.services.items()}

    def crashed(self) -> list[str]:
        return [name for name, process in self.services.items() if not process.alive()]


@pytest.fixture(scope="package")
def secure_mesh(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: EmbeddedServer,
    otlp_receiver: OtlpReceiver,
) -> Iterator[SecureMesh]:
    nats_server = start_nats(tmp_path_factory.mktemp("security-nats"))
    tracker = ProcessTracker(tmp_path_factory.mktemp("security-logs"))
    try:
        yield asyncio.run(_start(nats_server, redis_server, otlp_receiver, tracker))
    finally:
        tracker.kill_all()
        nats_server.stop()


async def _start(
    nats_server: EmbeddedServer,
    redis_server: EmbeddedServer,
    otlp_receiver: OtlpReceiver,
    tracker: ProcessTracker,
) -> SecureMesh:
    await provision(nats_server.url)
    # A database of our own: other tests flush database 0 of the same Redis.
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/9"
    api_keys = {tenant: f"key-{role}-{secrets.token_hex(12)}" for role, tenant in TENANTS.items()}
    secret = secrets.token_urlsafe(36)
    data = tracker.log_dir
    env = {
        "VOICEMESH_NATS_URL": nats_server.url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_TENANTS": ",".join(f"{TENANTS[r]}:{VERTICALS[r]}" for r in TENANTS),
        "VOICEMESH_CALL_TOKEN_SECRET": secret,
        "VOICEMESH_API_KEYS": ",".join(f"{t}:{k}" for t, k in api_keys.items()),
        "VOICEMESH_LOG_LEVEL": "DEBUG",
        "VOICEMESH_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "VOICEMESH_CALL_RATE_LIMIT": str(CALL_RATE_LIMIT),
        "VOICEMESH_OFFER_RATE_LIMIT": str(CALL_RATE_LIMIT),
        "VOICEMESH_RATE_WINDOW_S": str(RATE_WINDOW_S),
        "VOICEMESH_DEVICE_RATE_LIMIT": str(DEVICE_RATE_LIMIT),
        "VOICEMESH_DEVICE_RATE_WINDOW_S": str(RATE_WINDOW_S),
        "VOICEMESH_DEMO_ENABLED": "false",
        # Tool services answer at once; the agent's provider timeout stays generous for CPU
        # contention on a 2-core machine.
        "VOICEMESH_AGENT_PROVIDER_TIMEOUT_S": "8",
    }
    services: dict[str, ServiceProcess] = {}
    for name in SERVICES:
        database = f"sqlite+aiosqlite:///{data / (name + '.db')}"
        services[name] = tracker.python_module(
            f"voicemesh.{name}", {**env, "VOICEMESH_DATABASE_URL": database}
        )
    await asyncio.gather(*(p.wait_healthy(timeout=90) for p in services.values()))
    return SecureMesh(nats_server.url, redis_url, secret, api_keys, services, time.time())


@pytest.fixture
async def mesh_nats(secure_mesh: SecureMesh) -> AsyncIterator[NatsClient]:
    """A nats-py client on the security mesh's server."""
    client = await nats_client(secure_mesh.nats_url, name="voicemesh-security-test")
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.drain()


def record_security(section: str, data: dict[str, Any], path: Path = RESULTS) -> None:
    """Replace ``section`` of bench/results/security.json (other sections kept) and refresh
    the totals the chaos table prints: hostile inputs tried, rejected, crashes, 5xx."""
    results.record_section(path, section, data, totals=SECURITY_TOTALS)
