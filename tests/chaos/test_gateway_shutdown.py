"""SIGTERM to the gateway process with several calls up: each ends with ``server_shutdown``.

Extends the gateway's own tests (``services/gateway/tests/test_workers.py`` SIGTERMs a
worker with one call; ``test_calls.py`` ends two calls in-process) to the mesh: the gateway
and the agent run as processes, three aiortc callers are talking to the agent, and the
gateway is sent SIGTERM. Every call must end exactly once with ``server_shutdown`` in the
CALLS stream, every caller must see a clean close (the /demo data channel says
``ended: server_shutdown`` and the peer connection closes, not an ICE timeout half a minute
later), the agent must end its conversations, and the gateway must exit with status 0.
"""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial

import httpx
from nats.aio.client import Client as NatsClient

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import CallEnded
from voicemesh.testkit.fixtures import wait_until
from voicemesh.testkit.mesh import stored_events
from voicemesh.testkit.tracks import ToneTrack
from voicemesh.testkit.whip import WhipCaller

from .conftest import GatewayAndAgent, Recorder

TENANT = "demo-legal"
API_KEY = "chaos-sigterm-legal-key-0123456789"
SECRET = "chaos-sigterm-call-token-secret-0123456789"
CALLS = 3
#: A peer connection that closes cleanly does so at once; an ICE consent failure takes ~30 s.
CLEAN_CLOSE_S = 5.0


async def _ends(nats: NatsClient) -> list[CallEnded]:
    events = await stored_events(nats, subjects.call_lifecycle(TENANT, "*"))
    return [e for e in events if isinstance(e, CallEnded)]


def _page_said_ended(caller: WhipCaller) -> str | None:
    for raw in caller.messages:
        message = json.loads(raw)
        if message.get("type") == "ended":
            return str(message.get("reason"))
    return None


def _greeted(caller: WhipCaller) -> bool:
    return bool(caller.heard.loud_at)


def _closed(caller: WhipCaller) -> bool:
    return caller.pc is not None and caller.pc.connectionState in ("closed", "failed")


async def test_sigterm_ends_every_call_with_server_shutdown(
    nats: NatsClient, gateway_and_agent: GatewayAndAgent, chaos_results: Recorder
) -> None:
    gateway, agent, base = await gateway_and_agent(
        tenant=TENANT, vertical="legal", secret=SECRET, api_key=API_KEY
    )

    callers: list[WhipCaller] = []
    call_ids: list[str] = []
    closed_after: list[float] = []
    states: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        try:
            for _ in range(CALLS):
                # A quiet caller: the agent talks.
                caller = WhipCaller(http, datachannel=True, track=ToneTrack(amplitude=0.0))
                callers.append(caller)
                created = await caller.create(TENANT, API_KEY)
                call_ids.append(created["call_id"])
                assert (
                    await caller.connect(created["whip_url"], created["token"])
                ).status_code == 201
            for caller in callers:
                await wait_until(caller.connected, 20, what="the call to connect")
                await wait_until(partial(_greeted, caller), 20, what="the agent greeting")

            signalled = time.monotonic()
            # In a thread: the callers' event loop keeps running while the gateway drains.
            exit_code = await asyncio.to_thread(gateway.terminate, 20)
            assert exit_code == 0, gateway.log()[-3000:]
            for caller in callers:
                await wait_until(partial(_closed, caller), CLEAN_CLOSE_S, what="a clean close")
                closed_after.append(round(time.monotonic() - signalled, 2))
                assert caller.pc is not None
                states.append(caller.pc.connectionState)
            said = [_page_said_ended(c) for c in callers]
        finally:
            for caller in callers:
                await caller.close()

    async def all_ended() -> bool:
        return {e.call_id for e in await _ends(nats)} >= set(call_ids)

    await wait_until(all_ended, 10, interval=0.5, what="every CallEnded")
    ends = [e for e in await _ends(nats) if e.call_id in call_ids]
    async with httpx.AsyncClient(timeout=5) as http:

        async def agent_idle() -> bool:
            response = await http.get(f"http://127.0.0.1:{agent.http_port}/v1/calls")
            return response.status_code == 200 and response.json()["active"] == 0

        await wait_until(agent_idle, 10, what="the agent to end its conversations")
    per_call = [sum(1 for e in ends if e.call_id == c) for c in call_ids]
    chaos_results(
        {
            "title": "gateway SIGTERM, 3 calls up",
            "calls": CALLS,
            "events_published": None,
            "faults": ["gateway SIGTERM"],
            "expected": CALLS,
            "recorded": sum(1 for n in per_call if n),
            "lost": sum(1 for n in per_call if n == 0),
            "duplicated": sum(n - 1 for n in per_call if n > 1),
            "exit_code": exit_code,
            "ended": [e.reason.value for e in ends],
            "closed_after_s": closed_after,
            "client_states": states,
            "crashes": int(not agent.alive()),
        },
    )
    assert sorted(e.call_id for e in ends) == sorted(call_ids), "each call ends exactly once"
    assert {e.reason.value for e in ends} == {"server_shutdown"}
    assert said == ["server_shutdown"] * CALLS
    assert states == ["closed"] * CALLS, "closed by the gateway, not failed by ICE"
    assert agent.alive()
