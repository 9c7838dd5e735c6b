"""Several gateway worker processes on one host: shared Redis registry, 307, 503, SIGTERM.

Each worker listens on its own port and advertises its own URL (``VOICEMESH_WORKER_URL``);
a full worker sends a WHIP offer to one with room with ``307`` (method and body kept) and
answers ``503`` with ``Retry-After`` when every worker is full.
"""

from __future__ import annotations

from typing import Any

import httpx
from nats.aio.client import Client as NatsClient

from voicemesh.common import decode_event
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.runtime.tokens import issue_call_token
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess, wait_until
from voicemesh.testkit.whip import WhipCaller

SECRET = "worker-test-call-token-secret-0123456789"
KEY = "worker-test-api-key-0123456789"
TENANT = "demo-insurance"


def _worker(
    processes: ProcessTracker, name: str, nats_url: str, redis_url: str
) -> tuple[ServiceProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_CALL_TOKEN_SECRET": SECRET,
        "VOICEMESH_API_KEYS": f"{TENANT}:{KEY}",
        "VOICEMESH_HTTP_PORT": str(port),
        "VOICEMESH_WORKER_ID": name,
        "VOICEMESH_WORKER_URL": url,
        "VOICEMESH_MAX_CALLS": "1",
    }
    return processes.python_module("voicemesh.gateway", env, name=name, http_port=port), url


async def test_workers_share_calls_and_shut_down_cleanly(
    nats: NatsClient, nats_url: str, redis_url: str, processes: ProcessTracker
) -> None:
    await streams.apply(nats.jetstream())
    ended: list[Any] = []

    async def on_lifecycle(msg: Any) -> None:
        event = decode_event(msg.data)
        if event.type == "call.ended":
            ended.append(event)

    await nats.subscribe(subjects.call_lifecycle(TENANT, "*"), cb=on_lifecycle)
    a, a_url = _worker(processes, "gw-a", nats_url, redis_url)
    b, b_url = _worker(processes, "gw-b", nats_url, redis_url)
    await a.wait_healthy()
    await b.wait_healthy()
    auth = {"Authorization": f"Bearer {KEY}"}
    callers: list[WhipCaller] = []
    async with httpx.AsyncClient(base_url=a_url, timeout=10) as http:
        try:
            first = WhipCaller(http)
            callers.append(first)
            created = await first.create(TENANT, KEY)
            assert created["whip_url"].startswith(a_url)
            assert (await first.connect(created["whip_url"], created["token"])).status_code == 201
            await wait_until(first.connected, 15, what="first call")

            # A pushed call's offer reaches the full worker A: 307 to B, which has room.
            second = WhipCaller(http)
            callers.append(second)
            token, _ = issue_call_token(SECRET, TENANT, "pushed-2")
            url = f"{a_url}/v1/{TENANT}/calls/pushed-2/whip"
            sdp = await second._offer()
            redirect = await http.post(
                url,
                content=sdp,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
            )
            assert redirect.status_code == 307
            assert redirect.headers["location"] == f"{b_url}/v1/{TENANT}/calls/pushed-2/whip"
            response = await second.connect(url, token)  # follows the 307 like a browser
            assert response.status_code == 201 and second.location
            assert second.location.startswith(b_url)
            await wait_until(second.connected, 15, what="second call")

            # Both full: call creation and offers say 503 with Retry-After.
            async def both_full() -> bool:
                r = await http.post(f"/v1/{TENANT}/calls", headers=auth)
                return r.status_code == 503 and r.headers.get("retry-after") == "5"

            await wait_until(both_full, 5, what="503 from the full workers")
            # A hang-up sent to the wrong worker is redirected to the call's owner.
            wrong = second.location.replace(b_url, a_url)
            moved = await http.delete(wrong)
            assert moved.status_code == 307 and moved.headers["location"] == second.location
            assert (await http.delete(moved.headers["location"])).status_code == 200

            # SIGTERM ends A's call with server_shutdown and A exits cleanly.
            assert a.terminate(20) == 0, a.log()[-2000:]
            await wait_until(lambda: any(e.reason.value == "server_shutdown" for e in ended), 5)
            assert sorted(e.reason.value for e in ended) == ["hangup", "server_shutdown"]
            assert [e.call_id for e in ended if e.reason.value == "server_shutdown"] == [
                created["call_id"]
            ]
            assert "Traceback" not in a.log() and token not in a.log() and KEY not in a.log()
        finally:
            for caller in callers:
                await caller.close()
