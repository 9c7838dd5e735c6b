"""Several gateway workers behind one Service: shared Redis registry, forwarding, 503, SIGTERM.

Each worker is a process on its own port with its own internal URL (``VOICEMESH_WORKER_URL``)
and media address (``VOICEMESH_MEDIA_ADVERTISE_IP``); clients only see the public origin
(``VOICEMESH_GATEWAY_PUBLIC_URL``). ``ServiceRoute`` plays the Kubernetes Service: the test
decides which replica each request lands on. A request for a call held by the other worker
is forwarded to it inside the cluster, a full worker forwards an offer to one with room, and
when every worker is full the answer is ``503`` with ``Retry-After``; no client ever sees a
redirect or an internal address.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
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
OPS = "worker-test-ops-token-0123456789"
TENANT = "demo-insurance"
PUBLIC = "https://voice.test"
SDP = "application/sdp"


class ServiceRoute(httpx.AsyncBaseTransport):
    """The Service in front of the workers: every request goes to the replica chosen with
    ``to``, whatever the URL's host (always the public origin here)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._replica = httpx.URL(PUBLIC)

    def to(self, replica: str) -> None:
        self._replica = httpx.URL(replica)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self._replica
        request.url = request.url.copy_with(
            scheme=target.scheme, host=target.host, port=target.port
        )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextlib.asynccontextmanager
async def _public_origin() -> AsyncIterator[
    tuple[ServiceRoute, httpx.AsyncClient, Callable[[], WhipCaller]]
]:
    """The Service, a client of the public origin through it, and a maker of phones on that
    client (closed on the way out)."""
    service = ServiceRoute()
    phones: list[WhipCaller] = []

    def phone() -> WhipCaller:
        phones.append(WhipCaller(http))
        return phones[-1]

    async with httpx.AsyncClient(transport=service, base_url=PUBLIC, timeout=20) as http:
        try:
            yield service, http, phone
        finally:
            for caller in phones:
                await caller.close()


def _worker(
    processes: ProcessTracker,
    name: str,
    nats_url: str,
    redis_url: str,
    media_ip: str,
    **settings: str,
) -> tuple[ServiceProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_CALL_TOKEN_SECRET": SECRET,
        "VOICEMESH_API_KEYS": f"{TENANT}:{KEY}",
        "VOICEMESH_METRICS_TOKEN": OPS,
        "VOICEMESH_HTTP_PORT": str(port),
        "VOICEMESH_WORKER_ID": name,
        "VOICEMESH_WORKER_URL": url,
        "VOICEMESH_GATEWAY_PUBLIC_URL": PUBLIC,
        "VOICEMESH_MEDIA_ADVERTISE_IP": media_ip,
        "VOICEMESH_MAX_CALLS": "1",
        **{f"VOICEMESH_{k.upper()}": v for k, v in settings.items()},
    }
    return processes.python_module("voicemesh.gateway", env, name=name, http_port=port), url


async def _two_workers(
    processes: ProcessTracker, nats_url: str, redis_url: str, **settings: str
) -> list[tuple[ServiceProcess, str]]:
    """Workers gw-a and gw-b, healthy. Each advertises its own media address: two loopback
    addresses stand in for two pod IPs."""
    workers = [
        _worker(processes, name, nats_url, redis_url, media_ip, **settings)
        for name, media_ip in (("gw-a", "127.0.0.1"), ("gw-b", "127.0.0.2"))
    ]
    for process, _ in workers:
        await process.wait_healthy()
    return workers


def _media_hosts(answer: str) -> set[str]:
    """The addresses an answer asks the caller to send media to."""
    candidates = re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ host", answer, re.M)
    return {*candidates, *re.findall(r"^c=IN IP[46] (\S+)", answer, re.M)}


async def _load(worker_url: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(f"{worker_url}/v1/gateway/load", headers=headers)


async def _active(worker_url: str) -> int:
    load = await _load(worker_url, Authorization=f"Bearer {OPS}")
    assert load.status_code == 200, load.text
    return int(load.json()["active"])


async def _ended_calls(nats: NatsClient) -> list[Any]:
    """Every ``CallEnded`` of the tenant from now on, as it arrives."""
    await streams.apply(nats.jetstream())
    ended: list[Any] = []

    async def on_lifecycle(msg: Any) -> None:
        event = decode_event(msg.data)
        if event.type == "call.ended":
            ended.append(event)

    await nats.subscribe(subjects.call_lifecycle(TENANT, "*"), cb=on_lifecycle)
    return ended


async def test_workers_share_calls_and_shut_down_cleanly(
    nats: NatsClient, nats_url: str, redis_url: str, processes: ProcessTracker
) -> None:
    ended = await _ended_calls(nats)
    (a, a_url), (b, b_url) = await _two_workers(processes, nats_url, redis_url)
    auth = {"Authorization": f"Bearer {KEY}"}
    async with _public_origin() as (service, http, phone):
        # The first call's offer lands on A, which answers it with its media address.
        service.to(a_url)
        first = phone()
        created = await first.create(TENANT, KEY)
        assert created["whip_url"].startswith(f"{PUBLIC}/v1/{TENANT}/calls/")
        answered = await first.connect(created["whip_url"], created["token"])
        assert answered.status_code == 201, answered.text
        assert first.location and first.location.startswith(PUBLIC)
        assert _media_hosts(answered.text) == {"127.0.0.1"}
        await wait_until(first.connected, 15, what="first call")
        assert (await _active(a_url), await _active(b_url)) == (1, 0)

        # The load endpoint: closed without the ops token, counts only with it.
        assert (await _load(a_url)).status_code == 401
        load = await _load(a_url, Authorization=f"Bearer {OPS}")
        assert {k: load.json()[k] for k in ("active", "capacity", "free")} == {
            "active": 1,
            "capacity": 1,
            "free": 0,
        }
        assert created["call_id"] not in load.text

        # The phone changes network and re-offers on its Location; the Service picks
        # B, which forwards the offer to A: the call stays where it is.
        service.to(b_url)
        reoffered = await first.reconnect()
        assert reoffered.status_code == 201, reoffered.text
        assert first.location.startswith(PUBLIC)
        assert _media_hosts(reoffered.text) == {"127.0.0.1"}  # A answered
        await wait_until(first.connected, 15, what="first call reconnected through B")
        assert (await _active(a_url), await _active(b_url)) == (1, 0)

        # A pushed call's offer lands on the full worker A, which forwards it to B.
        service.to(a_url)
        second = phone()
        token, _ = issue_call_token(SECRET, TENANT, "pushed-2")
        url = f"{PUBLIC}/v1/{TENANT}/calls/pushed-2/whip"
        sdp = await second._offer()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": SDP}
        forwarded = await http.post(url, content=sdp, headers=headers)
        assert forwarded.status_code == 201, forwarded.text  # not a redirect
        assert forwarded.headers["location"].startswith(f"{PUBLIC}/v1/{TENANT}/calls/pushed-2/")
        assert _media_hosts(forwarded.text) == {"127.0.0.2"}  # B answered
        await second._answered(forwarded)
        await wait_until(second.connected, 15, what="second call")
        assert (await _active(a_url), await _active(b_url)) == (1, 1)

        # Both full: call creation and offers say 503 with Retry-After, on either.
        for replica in (a_url, b_url):
            service.to(replica)

            async def both_full() -> bool:
                r = await http.post(f"/v1/{TENANT}/calls", headers=auth)
                return r.status_code == 503 and r.headers.get("retry-after") == "5"

            await wait_until(both_full, 5, what="503 from the full workers")
            third, _ = issue_call_token(SECRET, TENANT, "pushed-3")
            busy = await http.post(
                f"/v1/{TENANT}/calls/pushed-3/whip",
                content=sdp,
                headers={"Authorization": f"Bearer {third}", "Content-Type": SDP},
            )
            assert busy.status_code == 503 and busy.headers["retry-after"] == "5"

        # The first call hangs up through B: B forwards the DELETE to A.
        service.to(b_url)
        assert (await first.hangup()).status_code == 200
        await wait_until(lambda: [e.reason.value for e in ended] == ["hangup"], 5)
        assert ended[0].call_id == created["call_id"]
        assert await _active(a_url) == 0

        # SIGTERM ends B's call with server_shutdown and B exits cleanly; a late
        # hang-up for it reaches no one.
        assert b.terminate(20) == 0, b.log()[-2000:]
        await wait_until(lambda: len(ended) == 2, 5, what="the second call ended")
        assert [(e.call_id, e.reason.value) for e in ended[1:]] == [("pushed-2", "server_shutdown")]
        service.to(a_url)
        assert (await second.hangup()).status_code == 404
        for log in (a.log(), b.log()):
            assert "Traceback" not in log and token not in log and KEY not in log
            assert first.location.rsplit("/", 1)[1] not in log  # session URLs unlogged


async def test_the_calls_of_a_lost_worker_end_and_it_gets_no_more_requests(
    nats: NatsClient, nats_url: str, redis_url: str, processes: ProcessTracker
) -> None:
    ended = await _ended_calls(nats)
    (a, a_url), (b, b_url) = await _two_workers(processes, nats_url, redis_url, worker_lost_s="3")
    async with _public_origin() as (service, http, phone):
        service.to(b_url)
        lost = phone()
        created = await lost.create(TENANT, KEY)
        await lost.dial(created["whip_url"], created["token"], connect_timeout_s=15)
        assert lost.location is not None

        # B dies without a word (SIGKILL: no CallEnded of its own): A ends its call.
        b.kill()
        await wait_until(lambda: ended, 15, what="the lost worker's call ended by A")
        assert [(e.call_id, e.reason.value) for e in ended] == [(created["call_id"], "error")]

        # The Service now sends everything to A: the lost call is gone, new calls
        # are A's, and a full A has no one to forward to.
        service.to(a_url)
        assert (await http.delete(lost.location)).status_code == 404
        fresh = phone()
        again = await fresh.create(TENANT, KEY)
        answered = await fresh.connect(again["whip_url"], again["token"])
        assert answered.status_code == 201, answered.text
        assert _media_hosts(answered.text) == {"127.0.0.1"}
        r = await http.post(f"/v1/{TENANT}/calls", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert len(ended) == 1  # nothing else was ended
        assert "Traceback" not in a.log()
