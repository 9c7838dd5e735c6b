"""Redis restarts (and, being ephemeral, comes back empty) while calls are up and ringing.

The gateway and push run as processes against a Redis this test owns. A WebRTC call is
connected (an echo agent on NATS plays the agent), and a second call is ringing a phone that
does not answer. Redis is stopped and started again with nothing in it. Nothing may crash:
the connected call keeps its audio and hangs up cleanly, new calls can be created, the
gateway's worker record is rebuilt, and the ringing call still ends (``CallMissed`` at its
ring deadline, with the missed-call text) instead of ringing forever.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from voicemesh.apnssim.certs import make_provider_key
from voicemesh.apnssim.server import ApnsSimulator, ProviderKey
from voicemesh.common import decode_event
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import AnyEvent, CallRequested
from voicemesh.testkit.apns import write_credentials
from voicemesh.testkit.embedded import EmbeddedServer, free_port, start_redis
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess, wait_until
from voicemesh.testkit.mesh import publish_event
from voicemesh.testkit.whip import EchoAgent, WhipCaller

TENANT = "demo-salon"
API_KEY = "chaos-redis-salon-key-0123456789"
SECRET = "chaos-redis-call-token-secret-0123456789"
BUNDLE = "com.example.voicemesh"
DEVICE = "ab" * 32
RING_S = 4.0
DOWN_S = 1.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A Redis only this test uses: restarting the session's would disturb other tests."""
    with start_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[ApnsSimulator]:
    async with ApnsSimulator.with_own_tls(tmp_path / "tls", slow_s=0.5) as simulator:
        yield simulator


def _credentials(sim: ApnsSimulator, directory: Path) -> Path:
    key = make_provider_key()
    sim.add_key(ProviderKey(key.key_id, key.team_id, key.public_pem, frozenset({BUNDLE})))
    return write_credentials(directory, TENANT, key, BUNDLE)


def _start(
    processes: ProcessTracker,
    nats_url: str,
    redis_url: str,
    sim: ApnsSimulator,
    tmp_path: Path,
) -> tuple[ServiceProcess, ServiceProcess, int]:
    gateway_port = free_port()
    common = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_TENANTS": f"{TENANT}:salon",
        "VOICEMESH_CALL_TOKEN_SECRET": SECRET,
        "VOICEMESH_API_KEYS": f"{TENANT}:{API_KEY}",
    }
    gateway = processes.python_module("voicemesh.gateway", common, http_port=gateway_port)
    push = processes.python_module(
        "voicemesh.push",
        {
            **common,
            "VOICEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'push.db'}",
            "VOICEMESH_APNS_HOST": "localhost",
            "VOICEMESH_APNS_PORT": str(sim.port),
            "VOICEMESH_APNS_CA_FILE": str(sim.ca_path),
            "VOICEMESH_APNS_CREDENTIALS_DIR": str(_credentials(sim, tmp_path / "apns")),
            "VOICEMESH_GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{gateway_port}",
        },
    )
    return gateway, push, gateway_port


async def test_redis_restart_rebuilds_state_and_ends_affected_calls(
    nats: NatsClient,
    nats_url: str,
    own_redis: EmbeddedServer,
    apns: ApnsSimulator,
    processes: ProcessTracker,
    tmp_path: Path,
    chaos_results: Callable[[dict[str, Any]], None],
) -> None:
    await streams.apply(nats.jetstream(), services={"push"})
    events: list[AnyEvent] = []

    async def collect(msg: Msg) -> None:
        events.append(decode_event(msg.data))

    await nats.subscribe(subjects.call_lifecycle(TENANT, "*"), cb=collect)
    await nats.subscribe(subjects.sms_outbound(TENANT), cb=collect)
    agent = EchoAgent(nats, TENANT)
    await agent.start()
    gateway, push, port = _start(processes, nats_url, own_redis.url, apns, tmp_path)
    await gateway.wait_healthy(30)
    await push.wait_healthy(30)
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def kinds(call_id: str) -> list[str]:
        return [e.type for e in events if e.call_id == call_id]

    callers: list[WhipCaller] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        try:
            live = WhipCaller(http)
            callers.append(live)
            created = await live.create(TENANT, API_KEY)
            assert (await live.connect(created["whip_url"], created["token"])).status_code == 201
            await wait_until(live.connected, 20, what="the live call")
            await wait_until(lambda: live.heard.loud_at, 10, what="echo before the restart")

            # A phone that rings and is never answered.
            async with httpx.AsyncClient(base_url=push_url(push), timeout=10) as push_http:
                registered = await push_http.post(
                    f"/v1/{TENANT}/devices",
                    json={"user_id": "u-1", "token": DEVICE, "bundle_id": BUNDLE},
                    headers=auth,
                )
                assert registered.status_code == 201, registered.text
            ringing = CallRequested(
                tenant=TENANT,
                call_id="ringing-through-redis-restart",
                source="chaos",
                user_id="u-1",
                phone="+15550301234",
                ring_timeout_s=RING_S,
            )
            await publish_event(nats, ringing, subjects.call_lifecycle(TENANT, ringing.call_id))
            await wait_until(lambda: "call.ringing" in kinds(ringing.call_id), 10, what="ringing")

            # Redis goes away and comes back empty: a new server without persistence.
            before = redis.Redis(host="127.0.0.1", port=own_redis.port)
            run_id = before.info("server")["run_id"]
            before.close()
            down_at = time.monotonic()
            await asyncio.to_thread(own_redis.stop)
            await asyncio.sleep(DOWN_S)
            await asyncio.to_thread(own_redis.restart)
            back_at = time.monotonic()
            probe = redis.Redis(host="127.0.0.1", port=own_redis.port)
            assert probe.info("server")["run_id"] != run_id

            # The live call goes on: the caller hears the agent again.
            heard = await wait_until(
                lambda: next((t for t in live.heard.loud_at if t > back_at), None),
                5,
                what="audio after the restart",
            )
            # The gateway's worker record is rebuilt by its heartbeat.
            await wait_until(
                lambda: probe.hlen("voicemesh:gateway:workers"),
                10,
                what="the worker record",
            )
            # New calls work.
            fresh = WhipCaller(http)
            callers.append(fresh)
            created2 = await _create_when_ready(http, auth)
            assert (await fresh.connect(created2["whip_url"], created2["token"])).status_code == 201
            await wait_until(fresh.connected, 20, what="a call placed after the restart")
            # The ringing call ends at its deadline instead of ringing forever.
            await wait_until(
                lambda: "call.missed" in kinds(ringing.call_id),
                RING_S + 10,
                what="the ringing call to be missed",
            )
            await wait_until(
                lambda: any(e.type == "sms.job" for e in events), 5, what="missed-call text"
            )
            probe.close()
            for caller in (live, fresh):
                assert (await caller.hangup()).status_code == 200
            for call_id in (created["call_id"], created2["call_id"]):
                await wait_until(partial(_has, kinds, call_id, "call.ended"), 5, what="ended")
        finally:
            for caller in callers:
                await caller.close()
            await agent.stop()

    crashed = [p.name for p in (gateway, push) if not p.alive()]
    expected = [created["call_id"], created2["call_id"], ringing.call_id]
    ends = Counter(e.call_id for e in events if e.type in ("call.ended", "call.missed"))
    chaos_results(
        {
            "title": "Redis restart (empty), 2 live + 1 ringing",
            "calls": len(expected),
            "events_published": 1,
            "faults": [f"redis restart, empty ({back_at - down_at:.1f} s down)"],
            "expected": len(expected),
            "recorded": sum(1 for c in expected if ends[c]),
            "lost": sum(1 for c in expected if not ends[c]),
            "duplicated": sum(ends[c] - 1 for c in expected if ends[c] > 1),
            "audio_back_after_s": round(heard - back_at, 2),
            "ended": {
                e.call_id: getattr(e, "reason", e.type)
                for e in events
                if e.type in ("call.ended", "call.missed")
            },
            "crashes": len(crashed),
        },
    )
    assert not crashed
    ended = [e for e in events if e.type == "call.ended"]
    assert sorted(e.call_id for e in ended) == sorted([created["call_id"], created2["call_id"]])
    assert {getattr(e, "reason", None) for e in ended} == {"hangup"}
    for process in (gateway, push):
        await process.wait_healthy(5)  # still serving, not merely alive
        assert API_KEY not in process.log() and SECRET not in process.log()


def _has(kinds: Callable[[str], list[str]], call_id: str, kind: str) -> bool:
    return kind in kinds(call_id)


def push_url(process: ServiceProcess) -> str:
    return f"http://127.0.0.1:{process.http_port}"


async def _create_when_ready(http: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, Any]:
    response = await http.post(f"/v1/{TENANT}/calls", headers=auth)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
