"""A call through the mesh on NATS as it is deployed: the shipped ``auth.conf`` loaded.

Every process is who its manifest says it is to NATS: the stream job is ``admin``
(``VOICEMESH_NATS_USER``/``PASSWORD``, as in ``streams-job.yaml``), the gateway and push
are their own users serving every tenant, and the six containers of demo-salon's pod and
the caller's CLI are the tenant's user, fenced to ``vm.demo-salon.>`` and its own inboxes.
A process that opened a connection any other way (the agent's media connection once had
no credentials) is refused, and the call below never connects or never books.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from datetime import time
from types import ModuleType

import httpx
import pytest

from voicemesh.common.contracts.events import event_types
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import LocalDays, ProcessTracker, ServiceProcess
from voicemesh.testkit.mesh import EventTypesSeen, nats_client

from ..conftest import DeployedNats
from .conftest import appointments_tomorrow_at, call_progress, voicemesh_call

pytestmark = pytest.mark.slow

TENANT, VERTICAL = "demo-salon", "salon"  # a vertical overlay's demo tenant: in auth.conf


async def _streams_apply(nats: DeployedNats) -> None:
    """The stream job as ``streams-job.yaml`` runs it: the admin user from the environment."""
    env = {**os.environ, "VOICEMESH_NATS_URL": nats.url, **nats.identity("admin").env()}
    job = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicemesh.cli", "streams", "apply", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(job.communicate(), 60)
    assert job.returncode == 0, output.decode()


async def _start_services(
    nats: DeployedNats,
    pod_services: tuple[str, ...],
    redis_url: str,
    processes: ProcessTracker,
    api_key: str,
) -> dict[str, ServiceProcess]:
    gateway_port = free_port()
    shared = {
        "VOICEMESH_NATS_URL": nats.url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_TENANTS": f"{TENANT}:{VERTICAL}",
        "VOICEMESH_API_KEYS": f"{TENANT}:{api_key}",
        "VOICEMESH_CALL_TOKEN_SECRET": secrets.token_urlsafe(36),
        "VOICEMESH_GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{gateway_port}",
    }
    identities = {
        "gateway": nats.identity("gateway"),
        "push": nats.identity("push"),
        **{name: nats.identity(TENANT) for name in pod_services},
    }
    services = {
        name: processes.python_module(
            f"voicemesh.{name}",
            {
                **shared,
                **identity.env(),
                "VOICEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{processes.log_dir / name}.db",
            },
            http_port=gateway_port if name == "gateway" else None,
        )
        for name, identity in identities.items()
    }
    assert identities["gateway"].tenant == identities["push"].tenant == "*"  # as deployed
    await asyncio.gather(*(s.wait_healthy(timeout=90) for s in services.values()))
    return services


async def test_a_call_books_with_every_process_on_its_deployed_nats_user(
    deployed_nats: DeployedNats,
    k8s: ModuleType,
    redis_url: str,
    processes: ProcessTracker,
) -> None:
    pod_services: tuple[str, ...] = k8s.nats_auth.POD_SERVICES
    assert set(pod_services) == {"agent", "crm", "calendar", "sms", "audit", "transcript"}
    await _streams_apply(deployed_nats)
    api_key = "vmk_" + secrets.token_urlsafe(24)
    services = await _start_services(deployed_nats, pod_services, redis_url, processes, api_key)
    url = {name: f"http://127.0.0.1:{s.http_port}" for name, s in services.items()}

    tenant = deployed_nats.identity(TENANT)
    watch = await nats_client(deployed_nats.url, name="voicemesh-test-watch", identity=tenant)
    seen = EventTypesSeen(watch, TENANT)
    await seen.start()
    days = LocalDays()
    try:
        code, output, _ = await voicemesh_call(
            "--tenant", TENANT, "--data-dir", str(processes.log_dir / "no-stack"),
            "--gateway-url", url["gateway"], "--transcript-url", url["transcript"],
            "--nats-url", deployed_nats.url, "--api-key", api_key,
            env={**os.environ, "VOICEMESH_TENANTS": f"{TENANT}:{VERTICAL}", **tenant.env()},
            timeout=100,
        )  # fmt: skip
    finally:
        await seen.stop()
        await watch.drain()
    logs = "\n".join(f"--- {n}\n{s.log()[-1500:]}" for n, s in services.items())
    assert code == 0, output + logs

    progress = call_progress(output)
    assert any(p.startswith("agent said: Hi, thanks for calling Bella Salon") for p in progress)
    assert "booked" in progress, output + logs
    assert progress[-1].startswith("ended ("), output

    async with httpx.AsyncClient(timeout=10) as http:
        auth = {"Authorization": f"Bearer {api_key}"}
        at_three = await appointments_tomorrow_at(
            http, url["calendar"], TENANT, auth, days, time(15, 0)
        )
    booked = [a for a in at_three if a["status"] == "booked"]
    assert len(booked) == 1, at_three

    # Every event on the tenant's subjects is one `make docs` exports ...
    assert {"call.connected", "call.ended", "tool.event"} <= set(seen.types), seen.types
    unregistered = {t: s for t, s in seen.types.items() if t not in event_types()}
    assert unregistered == {}, "published but not in contracts.events.AnyEvent"
    # ... and no process stepped outside its permissions (the server logs each violation).
    assert deployed_nats.server.log_path is not None
    violations = [
        line
        for line in deployed_nats.server.log_path.read_text().splitlines()
        if "Violation" in line
    ]
    assert violations == []
