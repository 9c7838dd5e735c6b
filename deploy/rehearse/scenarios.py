"""What a rehearsal checks once it is up, each as a named scenario with a result.

* ``bring-up``: deploy.sh's steps for two tenants of different verticals; every pod ready.
* ``network-fence``: from tenant A's pod, the shared services it needs are open and tenant
  B's pod, the edge pods and the internet (plain HTTP) are closed.
* ``tenant-fence``: from inside tenant A's pod, with A's own credentials (the pod's
  environment), tenant B's NATS subjects, Redis keys and database are refused.
* ``container-crash``: tenant A's agent container is killed; it is restarted and ready.
* ``gateway-pod-deleted``: a gateway pod is deleted (preStop, grace period); its successor
  becomes ready.

Calls through the pods (phone, APNs simulator, agent) are not rehearsed yet: ``calls`` is
0 and ``setup_p95_ms`` is None in every result.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from deploy.rehearse.cluster import Cluster
from deploy.rehearse.kubelet import Pod
from deploy.rehearse.render import SHARED, Manifests


@dataclass
class Result:
    name: str
    passed: bool
    calls: int = 0
    faults: int = 0
    lost: int = 0
    duplicated: int = 0
    restarts: int = 0
    setup_p95_ms: float | None = None
    seconds: float = 0.0
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def agent_pod(cluster: Cluster, namespace: str) -> Pod:
    (pod,) = cluster.pods_of(namespace, {"app.kubernetes.io/name": "agent-pod"})
    return pod


def edge_pods(cluster: Cluster, app: str) -> list[Pod]:
    return cluster.pods_of(SHARED, {"app.kubernetes.io/name": app})


def in_pod(pod: Pod, container: str, code: str, timeout: float = 20.0) -> str:
    """Python ``code`` run inside ``container`` of ``pod`` (``kubectl exec``); its output."""
    status, out = pod.container(container).exec(["python", "-c", code], timeout)
    if status != 0:
        raise RuntimeError(f"exec in {pod.name}/{container} failed ({status}): {out[-500:]}")
    return out.strip()


def can_connect(pod: Pod, container: str, host: str, port: int) -> bool:
    """Whether a TCP connection from inside the pod to ``host:port`` opens within 2 s."""
    code = textwrap.dedent(f"""
        import socket
        s = socket.socket()
        s.settimeout(2)
        print("open" if s.connect_ex(({host!r}, {port})) == 0 else "closed")
    """)
    return in_pod(pod, container, code) == "open"


def network_fence(cluster: Cluster, manifests: Manifests) -> Result:
    a, b = (agent_pod(cluster, t.namespace) for t in manifests.tenants[:2])
    gateway = edge_pods(cluster, "gateway")[0]
    expected = {
        ("redis.voicemesh.svc.cluster.local", 6379): True,
        ("postgres.voicemesh.svc.cluster.local", 5432): True,
        ("nats.voicemesh.svc.cluster.local", 4222): True,
        (b.ip, 8083): False,
        (gateway.ip, 8080): False,
        ("198.18.77.20", 80): False,
    }
    problems = [
        f"{host}:{port} is {'closed' if want else 'open'} from {a.namespace}"
        for (host, port), want in expected.items()
        if can_connect(a, "crm", host, port) != want
    ]
    return Result("network-fence", not problems, problems=problems)


#: Run by a tenant pod's python (crm's image), with the pod's own settings and credentials:
#: prints what NATS, Redis and PostgreSQL answer to tenant argv[1]'s subjects, keys, database.
FENCE_PROBE = """
import asyncio, json, os, sys
from voicemesh.common.contracts import subjects
from voicemesh.common.runtime.connection import connect
from voicemesh.common.runtime.ratelimit import tenant_key_pattern
from voicemesh.common.runtime.settings import ServiceSettings

other, other_db = sys.argv[1], sys.argv[2]
settings = ServiceSettings()
found = {}

async def nats() -> None:
    errors = []
    async def on_error(exc):
        errors.append(repr(exc))
    client = await connect(settings, name="fence-probe", error_cb=on_error)
    try:
        await client.subscribe(subjects.all_tenant_subjects(other))
        await client.flush(timeout=3)
        await asyncio.sleep(1)
        found["nats subscribe"] = "refused" if any("ermission" in e for e in errors) else "allowed"
        errors.clear()
        await client.publish(subjects.all_tenant_subjects(other).replace(">", "probe"), b"{}")
        await client.flush(timeout=3)
        await asyncio.sleep(1)
        found["nats publish"] = "refused" if any("ermission" in e for e in errors) else "allowed"
    finally:
        await client.close()

async def redis() -> None:
    import redis.asyncio as aioredis
    client = aioredis.from_url(settings.redis_url)
    try:
        await client.set(tenant_key_pattern(other).replace("*", "fence-probe"), "x", ex=5)
        found["redis write"] = "allowed"
    except Exception as exc:
        refused = "NOPERM" in str(exc) or type(exc).__name__ == "NoPermissionError"
        found["redis write"] = "refused" if refused else f"error {type(exc).__name__}"
    finally:
        await client.aclose()

async def database() -> None:
    import asyncpg
    url = settings.database_url.get_secret_value().replace("postgresql+asyncpg", "postgresql")
    own_db = url.rsplit("/", 1)[1].split("?", 1)[0]
    url = url.replace("/" + own_db, "/" + other_db, 1).split("?", 1)[0]
    try:
        conn = await asyncpg.connect(url, ssl="verify-full")
    except Exception as exc:
        found["database connect"] = f"refused ({type(exc).__name__})"
        return
    found["database connect"] = "allowed"
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' LIMIT 1"
        )
        if tables:
            await conn.fetch(f'SELECT 1 FROM "{tables[0][0]}" LIMIT 1')
            found["database read"] = "allowed"
        else:
            found["database read"] = "no tables"
    except Exception as exc:
        found["database read"] = f"refused ({type(exc).__name__})"
    finally:
        await conn.close()

async def main() -> None:
    for check in (nats, redis, database):
        try:
            await check()
        except Exception as exc:
            found[check.__name__] = f"error {type(exc).__name__}: {exc}"[:200]

asyncio.run(main())
print(json.dumps(found))
"""


def tenant_fence(cluster: Cluster, manifests: Manifests) -> Result:
    a, b = manifests.tenants[:2]
    pod = agent_pod(cluster, a.namespace)
    other_db = "vm_" + b.name.replace("-", "_")
    status, out = pod.container("crm").exec(["python", "-c", FENCE_PROBE, b.name, other_db], 60.0)
    if status != 0:
        return Result("tenant-fence", False, problems=[f"probe failed: {out[-300:]}"])
    found = json.loads(out.strip().splitlines()[-1])
    problems = [
        f"{a.name} -> {b.name}: {what} {answer}"
        for what, answer in found.items()
        if not str(answer).startswith("refused") and what != "database connect"
    ]
    if found.get("database connect") == "allowed":
        problems.append(
            f"{a.name} may connect to {b.name}'s database {other_db} (CONNECT is granted to PUBLIC)"
        )
    return Result("tenant-fence", not problems, detail=json.dumps(found), problems=problems)


def container_crash(cluster: Cluster, manifests: Manifests) -> Result:
    agent = agent_pod(cluster, manifests.tenants[0].namespace).container("agent")
    before = agent.restarts
    agent.kill()
    try:
        cluster.wait(lambda: agent.restarts == before + 1, 30, "the agent is not restarted")
        cluster.wait(lambda: agent.ready, 180, "the agent is not ready again")
    except TimeoutError as exc:
        return Result("container-crash", False, faults=1, problems=[str(exc).splitlines()[0]])
    return Result("container-crash", True, faults=1, restarts=agent.restarts - before)


def gateway_pod_deleted(cluster: Cluster, manifests: Manifests) -> Result:
    gateway = edge_pods(cluster, "gateway")[0]
    started = time.monotonic()
    successor = cluster.delete_pod(gateway)
    took = time.monotonic() - started
    problems = []
    if took > gateway.grace + 5:
        problems.append(f"the pod took {took:.0f}s to stop (grace {gateway.grace:.0f}s)")
    if successor is None:
        return Result("gateway-pod-deleted", False, faults=1, problems=["no successor"])
    try:
        cluster.wait(lambda: successor.ready, 180, "the new gateway pod is not ready")
    except TimeoutError as exc:
        problems.append(str(exc).splitlines()[0])
    detail = f"stopped in {took:.1f}s"
    return Result("gateway-pod-deleted", not problems, faults=1, detail=detail, problems=problems)


SCENARIOS: list[Callable[[Cluster, Manifests], Result]] = [
    network_fence,
    tenant_fence,
    container_crash,
    gateway_pod_deleted,
]


def run(cluster: Cluster, manifests: Manifests) -> list[Result]:
    results = []
    for scenario in SCENARIOS:
        started = time.monotonic()
        try:
            result = scenario(cluster, manifests)
        except Exception as exc:  # a scenario that breaks is a failed scenario, with why
            result = Result(scenario.__name__.replace("_", "-"), False, problems=[repr(exc)])
        result.seconds = round(time.monotonic() - started, 1)
        results.append(result)
    return results
