"""Push throughput and latency: CallRequested → request at the APNs simulator.

Runs the APNs simulator and the push service as their own processes on embedded NATS and
Redis. Baseline, in the same run: bare aioapns sending the same VoIP pushes to the same
simulator with 1 and 4 connections. Figures: paced 200 calls/s latency (p50/p99), the same
paced run while a second tenant's device tokens never get an answer (isolation), and
sustained flood throughput (3,000 CallRequested published at once, first publish to last
push at the simulator) with 1 and 4 APNs connections.

    uv run python bench/push.py
    PUSH_BENCH_PROFILE=/tmp/prof uv run python bench/push.py   # + py-spy of each flood
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _report import median, percentile, report
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol

from voicemesh.apnssim.behaviours import Behaviour, token_for
from voicemesh.apnssim.certs import make_provider_key, make_tls_material
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import CallRequested, new_call_id
from voicemesh.testkit.apns import write_credentials
from voicemesh.testkit.embedded import free_port, start_nats, start_redis
from voicemesh.testkit.mesh import nats_client, publish_event

BUNDLE = "dev.voicemesh.bench"
SECRET = "b" * 40
USERS = 40
PACED_RATE, PACED_S = 200, 4.0
FLOOD = 3000
ROUNDS = 2
PROFILE_DIR = (
    Path(os.environ["PUSH_BENCH_PROFILE"]) if os.environ.get("PUSH_BENCH_PROFILE") else None
)


async def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not healthy")


async def bare_aioapns(port: int, ca: Path, key: Any, connections: int, n: int) -> float:
    """Pushes/s of plain aioapns clients (round-robin), 200 requests in flight."""
    ctx = ssl.create_default_context(cafile=str(ca))
    proto = type(
        "L", (APNsProductionClientProtocol,), {"APNS_SERVER": "localhost", "APNS_PORT": port}
    )
    clients = []
    for _ in range(connections):
        c = APNs(
            key=key.private_pem,
            key_id=key.key_id,
            team_id=key.team_id,
            topic=f"{BUNDLE}.voip",
            ssl_context=ctx,
            max_connections=1,
        )
        c.pool.protocol_class = proto
        clients.append(c)
    token = token_for(Behaviour.OK, "bench")
    payload = {
        "aps": {},
        "uuid": "00000000-0000-4000-8000-000000000000",
        "callerName": "x",
        "handle": "y",
        "hasVideo": False,
        "call_token": "t" * 300,
    }
    gate = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with gate:
            r = await clients[i % connections].send_notification(
                NotificationRequest(
                    token, payload, push_type=PushType.VOIP, priority=10, time_to_live=0
                )
            )
            assert r.is_successful

    await asyncio.gather(*(one(i) for i in range(50)))  # warm the connections
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    rate = n / (time.perf_counter() - started)
    for c in clients:
        c.pool.close()
    return rate


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (``uv pip install py-spy``) sampling the push process during a flood."""
    argv = [
        shutil.which("py-spy") or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "200",
    ]
    argv += ["--duration", "8", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Run:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], env: dict[str, str], name: str) -> None:
        log = open(self.tmp / f"{name}.log", "ab")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def stop_last(self) -> None:
        proc = self.procs.pop()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            print(f"warning: {proc.args!r} did not stop within 20 s of SIGTERM; killed")
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        while self.procs:
            self.stop_last()


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="push-bench-"))
    nats_srv, redis_srv = start_nats(tmp / "nats"), start_redis(tmp / "redis")
    run = Run(tmp)
    try:
        tls = make_tls_material(tmp / "tls")
        keys = {"bench-a": make_provider_key(), "bench-b": make_provider_key()}
        creds = tmp / "creds"
        for t, k in keys.items():
            write_credentials(creds, t, k, BUNDLE)
        (tmp / "keys.json").write_text(
            json.dumps(
                [
                    {"key_id": k.key_id, "team_id": k.team_id, "public_key": k.public_pem}
                    for k in keys.values()
                ]
            )
        )
        sim_port, admin_port = free_port(), free_port()
        run.spawn(
            [
                "-m",
                "voicemesh.apnssim",
                "--port",
                str(sim_port),
                "--admin-port",
                str(admin_port),
                "--tls-dir",
                str(tmp / "tls"),
                "--cert",
                str(tls.cert_path),
                "--key",
                str(tls.key_path),
                "--keys-file",
                str(tmp / "keys.json"),
            ],
            {},
            "apnssim",
        )
        admin = f"http://127.0.0.1:{admin_port}"
        await wait_http(admin + "/healthz")

        async def baseline_run(connections: int) -> float:
            return await bare_aioapns(sim_port, tls.ca_path, keys["bench-a"], connections, 2000)

        nc = await nats_client(nats_srv.url)
        await streams.apply(nc.jetstream(), services=set())
        js = nc.jetstream()
        api_keys = {t: f"key-{t}-0123456789abcdef" for t in keys}
        results: dict[str, Any] = {}

        async def start_push(connections: int) -> str:
            port = free_port()
            run.spawn(
                ["-m", "voicemesh.push"],
                {
                    "VOICEMESH_NATS_URL": nats_srv.url,
                    "VOICEMESH_REDIS_URL": redis_srv.url,
                    "VOICEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/push-{connections}.db",
                    "VOICEMESH_TENANTS": "bench-a:salon,bench-b:salon",
                    "VOICEMESH_HTTP_PORT": str(port),
                    "VOICEMESH_API_KEYS": ",".join(f"{t}:{k}" for t, k in api_keys.items()),
                    "VOICEMESH_APNS_HOST": "localhost",
                    "VOICEMESH_APNS_PORT": str(sim_port),
                    "VOICEMESH_APNS_CA_FILE": str(tls.ca_path),
                    "VOICEMESH_APNS_CREDENTIALS_DIR": str(creds),
                    "VOICEMESH_APNS_CONNECTIONS": str(connections),
                    "VOICEMESH_CALL_TOKEN_SECRET": SECRET,
                    "VOICEMESH_LOG_LEVEL": "WARNING",
                    "VOICEMESH_WORKERS": "64",
                },
                f"push-{connections}",
            )
            url = f"http://127.0.0.1:{port}"
            await wait_http(url + "/healthz")
            return url

        async def register(url: str, tenant: str, behaviour: Behaviour) -> list[str]:
            users = []
            async with httpx.AsyncClient(timeout=10) as http:
                for u in range(USERS):
                    user = f"{tenant}-u{u}"
                    r = await http.post(
                        f"{url}/v1/{tenant}/devices",
                        json={
                            "user_id": user,
                            "token": token_for(behaviour, f"{tenant}{u}{behaviour}"),
                            "bundle_id": BUNDLE,
                        },
                        headers={"Authorization": f"Bearer {api_keys[tenant]}"},
                    )
                    r.raise_for_status()
                    users.append(user)
            return users

        async def publish(tenant: str, user: str) -> tuple[str, float]:
            event = CallRequested(
                tenant=tenant, call_id=new_call_id(), source="bench", user_id=user
            )
            sent = time.time()
            await publish_event(js, event, subjects.call_lifecycle(tenant, event.call_id))
            return event.call_id, sent

        async def received(since: int) -> dict[str, float]:
            async with httpx.AsyncClient(timeout=30) as http:
                pushes = (await http.get(admin + "/v1/pushes", params={"since": since})).json()[
                    "pushes"
                ]
            return {
                p["payload"]["call_id"]: p["received_at"]
                for p in pushes
                if p["status"] == 200 and isinstance(p["payload"], dict)
            }

        async def last_seq() -> int:
            async with httpx.AsyncClient(timeout=10) as http:
                return int((await http.get(admin + "/v1/info")).json()["received"])

        async def paced(users_a: list[str], users_b: list[str] | None) -> list[float]:
            since = await last_seq()
            sent: dict[str, float] = {}
            n = int(PACED_RATE * PACED_S)
            t0 = time.monotonic()
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i / PACED_RATE - time.monotonic()))
                call_id, at = await publish("bench-a", users_a[i % len(users_a)])
                sent[call_id] = at
                if users_b is not None and i % 4 == 0:
                    await publish("bench-b", users_b[(i // 4) % len(users_b)])
            await asyncio.sleep(1.0)
            got = await received(since)
            return [(got[c] - s) * 1000 for c, s in sent.items() if c in got]

        async def flood(users: list[str], label: str) -> float:
            since = await last_seq()
            profiler = None
            if PROFILE_DIR is not None:
                profiler = start_profiler(run.procs[-1].pid, PROFILE_DIR / f"push-{label}.txt")
                await asyncio.sleep(1.0)
            gate = asyncio.Semaphore(256)

            async def one(i: int) -> tuple[str, float]:
                async with gate:
                    return await publish("bench-a", users[i % len(users)])

            sent = await asyncio.gather(*(one(i) for i in range(FLOOD)))
            first = min(at for _, at in sent)
            deadline = time.monotonic() + 30
            rate = 0.0
            while time.monotonic() < deadline:
                got = await received(since)
                if all(c in got for c, _ in sent):
                    rate = FLOOD / (max(got[c] for c, _ in sent) - first)
                    break
                await asyncio.sleep(0.5)
            else:
                rate = len(got) / (time.time() - first)
            if profiler is not None:
                profiler.wait(30)
            return rate

        url = await start_push(1)
        users_a = await register(url, "bench-a", Behaviour.OK)
        users_b = await register(url, "bench-b", Behaviour.NEVER_ANSWERS)
        await paced(users_a[:5], None)  # warm up
        lat_alone = await paced(users_a, None)
        lat_isolated = await paced(users_a, users_b)
        # The machine is shared: baseline and flood alternate, ROUNDS times each, and the
        # ratio is the median of each round's paired ratio.
        baseline: dict[int, list[float]] = {1: [], 4: []}
        floods: dict[int, list[float]] = {1: [], 4: []}
        for connections in (1, 4):
            if connections != 1:
                run.stop_last()
                await start_push(connections)
            for r in range(ROUNDS):
                baseline[connections].append(await baseline_run(connections))
                floods[connections].append(await flood(users_a, f"{connections}conn-{r}"))
        await nc.drain()
        ratio = {
            c: median([f / b for f, b in zip(floods[c], baseline[c], strict=True)]) for c in (1, 4)
        }
        base = {c: median(baseline[c]) for c in (1, 4)}
        results["flood_1"], results["flood_4"] = median(floods[1]), median(floods[4])

        rows = [
            ["bare aioapns, 1 conn", "-", "-", round(base[1]), 1.0],
            ["bare aioapns, 4 conns", "-", "-", round(base[4]), 1.0],
            ["push, 200 calls/s, 1 tenant", median(lat_alone), percentile(lat_alone, 99), "-", "-"],
            [
                "push, 200/s + tenant B never answered",
                median(lat_isolated),
                percentile(lat_isolated, 99),
                "-",
                "-",
            ],
            [
                "push flood, 1 conn",
                "-",
                "-",
                round(results["flood_1"]),
                ratio[1],
            ],
            [
                "push flood, 4 conns",
                "-",
                "-",
                round(results["flood_4"]),
                ratio[4],
            ],
        ]
        report(
            "push",
            ["case", "p50 ms", "p99 ms", "pushes/s", "x bare aioapns"],
            rows,
            {
                "p50_ms": median(lat_alone),
                "p99_ms": percentile(lat_alone, 99),
                "isolation_p50_ms": median(lat_isolated),
                "isolation_p99_ms": percentile(lat_isolated, 99),
                "pushes_per_s_1conn": results["flood_1"],
                "pushes_per_s_4conn": results["flood_4"],
                "baseline_pushes_per_s_1conn": base[1],
                "baseline_pushes_per_s_4conn": base[4],
                "ratio_1conn": ratio[1],
                "ratio_4conn": ratio[4],
                "rounds": {
                    "baseline_1conn": baseline[1],
                    "baseline_4conn": baseline[4],
                    "push_1conn": floods[1],
                    "push_4conn": floods[4],
                },
                "paced_rate_per_s": PACED_RATE,
                "samples": len(lat_alone),
            },
        )
    finally:
        run.stop()
        redis_srv.stop()
        nats_srv.stop()


if __name__ == "__main__":
    asyncio.run(main())
