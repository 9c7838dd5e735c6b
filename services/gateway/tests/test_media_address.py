"""Each worker's media address: host candidates gathered on one address, another advertised.

The answer a worker sends carries its advertised address (``VOICEMESH_MEDIA_ADVERTISE_IP``,
e.g. a node's public IP in front of the pod) in every host candidate and ``c=`` line, never
0.0.0.0 or another interface; its sockets are bound to ``VOICEMESH_MEDIA_BIND_IP``. The
callers' peer connections in the same process gather as aioice always does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from voicemesh.gateway import GatewaySettings
from voicemesh.gateway.advertise import advertise, check_bindable
from voicemesh.testkit.whip import WhipCaller

from .conftest import API_KEY, TENANT, GatewayHarness

PUBLIC_IP = "203.0.113.7"  # TEST-NET-3: an address no interface here has


def candidate_hosts(sdp: str, kind: str = "host") -> set[str]:
    return set(re.findall(rf"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ {kind}", sdp, re.M))


def connection_hosts(sdp: str) -> set[str]:
    return set(re.findall(r"^c=IN IP[46] (\S+)", sdp, re.M))


async def test_the_answer_advertises_the_public_address_of_the_bound_one(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway(media_bind_ip="127.0.0.1", media_advertise_ip=PUBLIC_IP)
    caller = WhipCaller(h.http)
    try:
        created = await caller.create(TENANT, API_KEY)
        response = await caller.connect(created["whip_url"], created["token"])
        assert response.status_code == 201, response.text
        answer = response.text
        assert candidate_hosts(answer) == {PUBLIC_IP}
        assert connection_hosts(answer) == {PUBLIC_IP}
        assert "127.0.0.1" not in answer
        # The worker's own ICE sockets are on the bound address only.
        pc = h.gw.calls.calls[created["call_id"]].pc
        assert pc is not None
        gatherers = {t.receiver.transport.transport.iceGatherer for t in pc.getTransceivers()}
        assert {c.ip for g in gatherers for c in g.getLocalCandidates()} == {"127.0.0.1"}
        # The caller in this process gathered on its interfaces as usual (aioice never
        # offers 127.0.0.1 by itself): the worker's choice did not leak into it.
        assert caller.pc is not None
        offered = candidate_hosts(caller.pc.localDescription.sdp)
        assert offered and "127.0.0.1" not in offered and PUBLIC_IP not in offered
    finally:
        await caller.close()


async def test_a_worker_advertising_its_own_address_connects(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway(media_advertise_ip="127.0.0.1")
    caller = WhipCaller(h.http)
    try:
        created = await caller.create(TENANT, API_KEY)
        await caller.dial(created["whip_url"], created["token"], connect_timeout_s=15)
        assert caller.pc is not None
        answer = caller.pc.remoteDescription.sdp
        assert candidate_hosts(answer) == {"127.0.0.1"} == connection_hosts(answer)
    finally:
        await caller.close()


def test_advertise_rewrites_host_candidates_related_addresses_and_connection_lines() -> None:
    sdp = (
        "v=0\r\n"
        "o=- 1 1 IN IP4 0.0.0.0\r\n"
        "m=audio 40000 UDP/TLS/RTP/SAVPF 96\r\n"
        "c=IN IP4 10.1.2.3\r\n"
        "a=candidate:a1 1 udp 2130706431 10.1.2.3 40000 typ host\r\n"
        "a=candidate:b2 1 udp 1694498815 198.51.100.9 40000 typ srflx"
        " raddr 10.1.2.3 rport 40000\r\n"
        "a=candidate:c3 1 udp 16777215 192.0.2.50 50000 typ relay raddr 198.51.100.9 rport 1\r\n"
    )
    out = advertise(sdp, "10.1.2.3", PUBLIC_IP)
    assert candidate_hosts(out) == {PUBLIC_IP}
    assert candidate_hosts(out, "srflx") == {"198.51.100.9"}
    assert candidate_hosts(out, "relay") == {"192.0.2.50"}
    assert f"raddr {PUBLIC_IP} rport 40000" in out and "raddr 198.51.100.9 rport 1" in out
    assert connection_hosts(out) == {PUBLIC_IP}
    assert "10.1.2.3" not in out and out.count("\r\n") == sdp.count("\r\n")
    assert "o=- 1 1 IN IP4 0.0.0.0\r\n" in out  # the origin line is not an address to reach
    assert advertise(sdp, "10.1.2.3", "10.1.2.3") == sdp
    assert advertise(sdp, "", PUBLIC_IP) == sdp


def test_media_addresses_are_checked_at_startup() -> None:
    check_bindable("127.0.0.1")
    with pytest.raises(ValueError, match="not an address of this host"):
        check_bindable(PUBLIC_IP)
    with pytest.raises(ValidationError, match="IPv4 or IPv6 address"):
        GatewaySettings(media_advertise_ip="voice.example.com")
    with pytest.raises(ValidationError, match="both be IPv4 or IPv6"):
        GatewaySettings(media_bind_ip="10.0.0.5", media_advertise_ip="2001:db8::1")
    settings = GatewaySettings(media_bind_ip=" 10.0.0.5 ", media_advertise_ip=PUBLIC_IP)
    assert (settings.media_bind_ip, settings.media_advertise_ip) == ("10.0.0.5", PUBLIC_IP)
