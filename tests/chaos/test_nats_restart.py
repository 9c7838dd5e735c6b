"""nats-server restarts in the middle of calls: the gateway and the agent reconnect.

The gateway and the agent run as processes; callers are real aiortc peers dialling the
gateway over WHIP and speaking eSpeak audio. While the calls are up (the agent has greeted
each caller) nats-server is stopped, kept down for seconds (one caller hangs up meanwhile)
and started again on the same port and store. Once the services report their connection
back, each call must go on: the caller speaks and hears the agent answer within 3 s of the
end of its speech, or the call ends with ``CallEnded`` and a reason — never silence. The
hang-up made during the outage still ends its call, a call placed after the restart is
answered (the agent's durable consumer is back), and every call ends exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient

from voicemesh.agent.speech import speak
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import CallEnded, TranscriptSegment
from voicemesh.testkit.embedded import EmbeddedServer
from voicemesh.testkit.fixtures import wait_until
from voicemesh.testkit.mesh import stored_events
from voicemesh.testkit.tracks import CallerVoice
from voicemesh.testkit.whip import WhipCaller

from .conftest import GatewayAndAgent, Recorder

TENANT = "demo-salon"
API_KEY = "chaos-nats-salon-key-0123456789"
SECRET = "chaos-nats-call-token-secret-0123456789"
RATE = 48000
CALLS_BEFORE = 3
ANSWER_WITHIN_S = 3.0
DOWN_S = 2.0


class Caller(WhipCaller):
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.mic = CallerVoice()  # silence, or the speech ``play`` is given, in real time
        super().__init__(http, track=self.mic)
        self.call_id = ""

    def heard_after(self, moment: float) -> float | None:
        return next((t for t in self.heard.loud_at if t > moment), None)

    def quiet_for(self, seconds: float) -> bool:
        last = self.heard.loud_at[-1] if self.heard.loud_at else 0.0
        return bool(self.heard.loud_at) and time.monotonic() - last >= seconds

    async def call_in(self) -> None:
        created = await self.create(TENANT, API_KEY)
        self.call_id = created["call_id"]
        await self.dial(created["whip_url"], created["token"], connect_timeout_s=20)


async def _lifecycle_ends(nats: NatsClient) -> list[CallEnded]:
    """Every ``CallEnded`` in the CALLS stream."""
    events = await stored_events(nats, subjects.call_lifecycle(TENANT, "*"))
    return [e for e in events if isinstance(e, CallEnded)]


async def _restart(server: EmbeddedServer, while_down: Callable[[], Awaitable[None]]) -> float:
    """Stop nats-server, keep it down a while, start it on the same port and store."""
    started = time.monotonic()
    await asyncio.to_thread(server.stop)
    # A pod restart, not a blip: every client sees it, and a caller hangs up meanwhile.
    await asyncio.gather(asyncio.sleep(DOWN_S), while_down())
    await asyncio.to_thread(server.restart)
    return time.monotonic() - started


async def test_calls_survive_a_nats_restart(
    nats_server: EmbeddedServer,
    nats: NatsClient,
    gateway_and_agent: GatewayAndAgent,
    chaos_results: Recorder,
) -> None:
    gateway, agent, base = await gateway_and_agent(
        tenant=TENANT, vertical="salon", secret=SECRET, api_key=API_KEY
    )
    outcomes: list[dict[str, Any]] = []
    callers: list[Caller] = []
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        try:
            for _ in range(CALLS_BEFORE):
                caller = Caller(http)
                callers.append(caller)
                await caller.call_in()
            for caller in callers:  # the agent greets each caller
                await wait_until(partial(caller.heard_after, 0.0), 20, what="the greeting")
                await wait_until(partial(caller.quiet_for, 0.8), 20, what="greeting done")

            utterance = await asyncio.to_thread(speak, "I would like to book a haircut", RATE)
            quitter, talkers = callers[0], callers[1:]
            hangup: list[httpx.Response] = []

            async def hang_up_while_down() -> None:
                await asyncio.sleep(0.3)
                hangup.append(await quitter.hangup())

            down_s = await _restart(nats_server, hang_up_while_down)
            back_at = time.monotonic()
            # Both services report their NATS connection back (/healthz pings it).
            await asyncio.gather(gateway.wait_healthy(15), agent.wait_healthy(15))
            reconnected_s = time.monotonic() - back_at
            assert [r.status_code for r in hangup] == [200]
            outcomes.append({"call": quitter.call_id, "hung_up_while_nats_down": True})

            async def talk(caller: Caller) -> None:
                speech_s = len(utterance) / 2 / RATE
                try:
                    ended_at = await asyncio.wait_for(caller.mic.play(utterance), speech_s + 10)
                except TimeoutError:
                    # The microphone stopped being read: the call went away under the caller.
                    ended_at = time.monotonic()
                answered_at = await _answer_or_end(caller, ended_at, nats)
                outcomes.append(
                    {
                        "call": caller.call_id,
                        "answered_after_s": (
                            round(answered_at - ended_at, 2) if answered_at else None
                        ),
                        "silent_s": round((answered_at or ended_at) - back_at, 2),
                    }
                )
                await wait_until(lambda: caller.quiet_for(0.8), 20, what="answer done")

            await asyncio.gather(*(talk(c) for c in talkers))

            # A call placed after the restart is picked up: the consumer is back.
            late = Caller(http)
            callers.append(late)
            dialled = time.monotonic()
            await late.call_in()
            greeted = await wait_until(lambda: late.heard_after(dialled), 20, what="greeting")
            outcomes.append({"call": late.call_id, "greeted_after_s": round(greeted - dialled, 2)})

            for caller in callers[1:]:
                assert (await caller.hangup()).status_code == 200
        finally:
            for caller in callers:
                await caller.close()

    call_ids = {c.call_id for c in callers}

    async def all_ended() -> bool:
        return {e.call_id for e in await _lifecycle_ends(nats)} >= call_ids

    await wait_until(all_ended, 15, interval=0.5, what="every CallEnded")
    ends = [e for e in await _lifecycle_ends(nats) if e.call_id in call_ids]
    async with httpx.AsyncClient(timeout=5) as http:
        agent_port = agent.http_port
        await wait_until(
            lambda: _agent_idle(http, agent_port), 10, what="the agent to end its conversations"
        )
    per_call = Counter(e.call_id for e in ends)
    chaos_results(
        {
            "title": "NATS restart mid-call, gateway + agent",
            "calls": len(callers),
            "events_published": None,
            "faults": [f"nats-server restart ({down_s:.1f} s down)"],
            "reconnected_after_s": round(reconnected_s, 2),
            # Each call goes on or ends once with a reason; a silent call counts as lost.
            "expected": len(call_ids),
            "recorded": sum(1 for c in call_ids if per_call[c]),
            "lost": sum(1 for c in call_ids if not per_call[c]),
            "duplicated": sum(per_call[c] - 1 for c in call_ids if per_call[c] > 1),
            "outcomes": outcomes,
            "ended": {e.call_id: e.reason.value for e in ends},
            "crashes": sum(not p.alive() for p in (gateway, agent)),
        },
    )
    assert sorted(e.call_id for e in ends) == sorted(call_ids), "each call ends exactly once"
    assert {e.reason.value for e in ends} == {"hangup"}
    assert gateway.alive() and agent.alive()
    for process in (gateway, agent):
        assert API_KEY not in process.log() and SECRET not in process.log()


async def _answer_or_end(caller: Caller, spoke_until: float, nats: NatsClient) -> float | None:
    """When the agent's answer was heard; ``None`` if the call ended instead (with a reason)."""
    deadline = spoke_until + ANSWER_WITHIN_S
    while time.monotonic() < deadline:
        if heard := caller.heard_after(spoke_until):
            return heard
        await asyncio.sleep(0.05)
    ends = [e for e in await _lifecycle_ends(nats) if e.call_id == caller.call_id]
    loud = [round(t - spoke_until, 2) for t in caller.heard.loud_at[-5:]]
    wall = time.time() - (time.monotonic() - spoke_until)
    lines = [
        f"{s.speaker.value} at {s.occurred_at.timestamp() - wall:+.2f}s: {s.text}"
        for s in await stored_events(nats, subjects.call_transcript(TENANT, caller.call_id))
        if isinstance(s, TranscriptSegment)
    ]
    assert ends, (
        f"call {caller.call_id}: no answer within {ANSWER_WITHIN_S}s and not ended; "
        f"last loud audio at {loud} s from the end of speech; transcript {lines}"
    )
    return None


async def _agent_idle(http: httpx.AsyncClient, port: int | None) -> bool:
    response = await http.get(f"http://127.0.0.1:{port}/v1/calls")
    return response.status_code == 200 and response.json()["active"] == 0
