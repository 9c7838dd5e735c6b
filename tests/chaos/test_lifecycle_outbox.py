"""JetStream goes away at the moment a lifecycle event is due: the event still arrives, once.

The gateway and push run as processes on a nats-server this test stops for 5 s and starts
again on the same port and store, exactly when the event is due: ``CallEnded`` (a caller
hangs up), ``CallMissed`` (a ring deadline passes), and a ring deadline claimed by a push
replica that is then killed before it could publish, so that a second replica must take the
miss over once the first one's claim lapses. Afterwards the CALLS and SMS streams are read
back: each event is stored exactly once, and the missed-call text is queued exactly once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from redis.asyncio import Redis

from voicemesh.apnssim.certs import make_provider_key
from voicemesh.apnssim.server import ApnsSimulator, ProviderKey
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import CallRequested, new_call_id
from voicemesh.testkit.apns import write_credentials
from voicemesh.testkit.embedded import EmbeddedServer
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess, wait_until
from voicemesh.testkit.mesh import provision, publish_event, stored_events
from voicemesh.testkit.whip import WhipCaller

TENANT = "demo-salon"
API_KEY = "chaos-outbox-salon-key-0123456789"
SECRET = "chaos-outbox-call-token-secret-0123456789"
BUNDLE = "com.example.voicemesh"
DEVICE = "cd" * 32
PHONE = "+15550401234"
DOWN_S = 5.0
#: How long a push replica's claim on a ring deadline lasts before another may take it.
LEASE_S = 2.0
#: After the first copy arrives, how long to keep looking for a second one.
SETTLE_S = 2.0


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[ApnsSimulator]:
    async with ApnsSimulator.with_own_tls(tmp_path / "tls", slow_s=0.5) as simulator:
        yield simulator


def _common(nats_url: str, redis_url: str) -> dict[str, str]:
    return {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_TENANTS": f"{TENANT}:salon",
        "VOICEMESH_CALL_TOKEN_SECRET": SECRET,
        "VOICEMESH_API_KEYS": f"{TENANT}:{API_KEY}",
    }


def _push(
    processes: ProcessTracker,
    nats_url: str,
    redis_url: str,
    sim: ApnsSimulator,
    tmp_path: Path,
    *,
    name: str,
) -> ServiceProcess:
    credentials = tmp_path / "apns"
    if not (credentials / f"{TENANT}.json").exists():
        key = make_provider_key()
        sim.add_key(ProviderKey(key.key_id, key.team_id, key.public_pem, frozenset({BUNDLE})))
        write_credentials(credentials, TENANT, key, BUNDLE)
    return processes.python_module(
        "voicemesh.push",
        {
            **_common(nats_url, redis_url),
            "VOICEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'push.db'}",
            "VOICEMESH_APNS_HOST": "localhost",
            "VOICEMESH_APNS_PORT": str(sim.port),
            "VOICEMESH_APNS_CA_FILE": str(sim.ca_path),
            "VOICEMESH_APNS_CREDENTIALS_DIR": str(credentials),
            "VOICEMESH_RING_CLAIM_LEASE_S": str(LEASE_S),
        },
        name=name,
    )


async def _kinds(nats: NatsClient, call_id: str) -> Counter[str]:
    """How many of each event type the CALLS and SMS streams hold for ``call_id``."""
    found = await stored_events(nats, subjects.call_lifecycle(TENANT, call_id))
    found += await stored_events(nats, subjects.sms_outbound(TENANT))
    return Counter(e.type for e in found if e.call_id == call_id)


async def _arrives(nats: NatsClient, call_id: str, kinds: set[str], timeout: float) -> Counter[str]:
    """Wait until each of ``kinds`` is stored for the call, then settle and count again."""

    async def stored() -> bool:
        return kinds <= set(await _kinds(nats, call_id))

    await wait_until(stored, timeout, interval=0.5, what=f"{sorted(kinds)} stored")
    await asyncio.sleep(SETTLE_S)
    return await _kinds(nats, call_id)


async def _register_and_ring(push: ServiceProcess, nats: NatsClient, ring_s: float) -> str:
    """A phone that never answers, and a call ringing it with a ``ring_s`` deadline."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{push.http_port}") as http:
        registered = await http.post(
            f"/v1/{TENANT}/devices",
            json={"user_id": "u-1", "token": DEVICE, "bundle_id": BUNDLE},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert registered.status_code == 201, registered.text
    call = CallRequested(
        tenant=TENANT,
        call_id=new_call_id(),
        source="chaos",
        user_id="u-1",
        phone=PHONE,
        ring_timeout_s=ring_s,
    )
    await publish_event(nats, call, subjects.call_lifecycle(TENANT, call.call_id))

    async def ringing() -> bool:
        return "call.ringing" in await _kinds(nats, call.call_id)

    await wait_until(ringing, 10, interval=0.2, what="the call to ring")
    return call.call_id


async def _claimed(redis_url: str, call_id: str, timeout: float) -> None:
    """Wait until a push replica has taken the call's ring deadline (it is no longer
    ``ringing``)."""
    redis = Redis.from_url(redis_url)
    try:

        async def taken() -> bool:
            state = await redis.hget(f"voicemesh:push:call:{TENANT}:{call_id}", "state")
            return state not in (None, b"ringing")

        await wait_until(taken, timeout, interval=0.05, what="the ring deadline claimed")
    finally:
        await redis.aclose()


@pytest.mark.parametrize("ending", ["hangup", "sigterm"])
async def test_call_ended_while_jetstream_is_down_is_stored_once(
    ending: str,
    nats_server: EmbeddedServer,
    nats: NatsClient,
    redis_url: str,
    processes: ProcessTracker,
    chaos_results: Callable[[dict[str, Any]], None],
) -> None:
    """The caller hangs up, or the gateway is stopped (a rolling restart: its shutdown ends
    the call, and the ``CallEnded`` must be stored within the grace period, before it
    exits), while JetStream is away."""
    await provision(nats_server.url, services=set())
    gateway = processes.python_module("voicemesh.gateway", _common(nats_server.url, redis_url))
    await gateway.wait_healthy(30)
    base = f"http://127.0.0.1:{gateway.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        caller = WhipCaller(http)
        try:
            created = await caller.create(TENANT, API_KEY)
            call_id = created["call_id"]
            await caller.dial(created["whip_url"], created["token"], connect_timeout_s=20)

            async def connected() -> bool:
                return "call.connected" in await _kinds(nats, call_id)

            await wait_until(connected, 10, interval=0.2, what="CallConnected stored")
            down_at = time.monotonic()
            await asyncio.to_thread(nats_server.stop)
            # CallEnded is due now.
            if ending == "hangup":
                assert (await caller.hangup()).status_code == 200
            else:
                gateway.signal(signal.SIGTERM)
            await asyncio.sleep(DOWN_S - (time.monotonic() - down_at))
            await asyncio.to_thread(nats_server.restart)
            down_s = time.monotonic() - down_at
            assert gateway.proc is not None
            exit_code = None
            if ending == "sigterm":
                exit_code = await asyncio.to_thread(gateway.proc.wait, 20)
        finally:
            await caller.close()
    counts = await _arrives(nats, call_id, {"call.ended"}, 20)
    stored = await stored_events(nats, subjects.call_lifecycle(TENANT, call_id))
    reasons = [getattr(e, "reason", None) for e in stored if e.type == "call.ended"]
    chaos_results(
        {
            "title": f"JetStream down 5 s when CallEnded is due ({ending}, gateway)",
            "faults": [f"nats-server stopped {down_s:.1f} s at the {ending}"],
            "stored": dict(counts),
        }
    )
    assert counts == {"call.connected": 1, "call.ended": 1}
    if ending == "sigterm":
        assert reasons == ["server_shutdown"] and exit_code == 0
    else:
        assert reasons == ["hangup"] and gateway.alive()


@pytest.mark.parametrize("crash", [False, True], ids=["missed", "claimer-killed"])
async def test_ring_timeout_while_jetstream_is_down_is_missed_once_with_one_text(
    crash: bool,
    nats_server: EmbeddedServer,
    nats: NatsClient,
    redis_url: str,
    apns: ApnsSimulator,
    processes: ProcessTracker,
    tmp_path: Path,
    chaos_results: Callable[[dict[str, Any]], None],
) -> None:
    """The ring deadline passes while JetStream is away. With ``crash``, the replica that
    claimed it is SIGKILLed before it could publish, and a second replica started after the
    outage must take the miss over once the first one's claim lapses."""
    await provision(nats_server.url, services={"push"})
    push = _push(processes, nats_server.url, redis_url, apns, tmp_path, name="push-a")
    await push.wait_healthy(30)
    call_id = await _register_and_ring(push, nats, ring_s=2.0)
    down_at = time.monotonic()
    await asyncio.to_thread(nats_server.stop)
    await _claimed(redis_url, call_id, 10)  # the deadline passed: CallMissed is due now
    if crash:
        push.kill()  # between its claim and its publish: JetStream is still away
        await asyncio.sleep(DOWN_S - (time.monotonic() - down_at))
    else:
        # 5 s from the claim: longer than a publish waits, so the first attempt fails.
        await asyncio.sleep(DOWN_S)
    await asyncio.to_thread(nats_server.restart)
    down_s = time.monotonic() - down_at
    if crash:
        push = _push(processes, nats_server.url, redis_url, apns, tmp_path, name="push-b")
        await push.wait_healthy(30)
    counts = await _arrives(nats, call_id, {"call.missed", "sms.job"}, 20)
    chaos_results(
        {
            "title": "JetStream down 5 s when CallMissed is due"
            + (", claiming push replica SIGKILLed" if crash else " (push)"),
            "faults": [f"nats-server stopped {down_s:.1f} s at the ring deadline"]
            + (["push replica SIGKILLed after its claim"] if crash else []),
            "stored": dict(counts),
        }
    )
    assert counts == {"call.requested": 1, "call.ringing": 1, "call.missed": 1, "sms.job": 1}
    assert push.alive()
