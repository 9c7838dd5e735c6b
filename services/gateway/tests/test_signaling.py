"""Bad input at the signaling edge: clear 4xx answers, tokens never logged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from voicemesh.common.runtime.tokens import issue_call_token
from voicemesh.testkit.fixtures import wait_until
from voicemesh.testkit.whip import WhipCaller

from .conftest import API_KEY, OPS_TOKEN, SECRET, TENANT, GatewayHarness

SDP = {"Content-Type": "application/sdp"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _offer_sdp(h: GatewayHarness) -> tuple[WhipCaller, str]:
    caller = WhipCaller(h.http)
    return caller, await caller._offer()


async def test_call_creation_needs_a_key_except_for_demo_tenants(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway(tenants=f"{TENANT}:salon,acme:salon")
    assert (await h.http.post("/v1/acme/calls")).status_code == 401
    assert (await h.http.post("/v1/acme/calls", headers=_bearer(API_KEY))).status_code == 403
    # A tenant that does not exist answers as one that does: nothing to enumerate.
    for tenant in ("acme", "nobody"):
        assert (await h.http.post(f"/v1/{tenant}/calls")).status_code == 401
        forged = _bearer("forged-key-0123456789abcdef")
        assert (await h.http.post(f"/v1/{tenant}/calls", headers=forged)).status_code == 401
        basic = {"Authorization": f"Basic {API_KEY}"}
        assert (await h.http.post(f"/v1/{tenant}/calls", headers=basic)).status_code == 401
    assert (await h.http.post("/v1/nobody/calls", headers=_bearer(API_KEY))).status_code == 403
    demo = await h.http.post(f"/v1/{TENANT}/calls")  # the /demo page's own flow
    assert demo.status_code == 201
    body = demo.json()
    assert body["whip_url"] == f"http://gateway.test/v1/{TENANT}/calls/{body['call_id']}/whip"
    assert set(body) == {"call_id", "token", "expires_at", "whip_url"}


async def test_bad_offers_and_tokens_get_clear_answers(
    start_gateway: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h: GatewayHarness = await start_gateway(max_sdp_bytes=4096)
    created = (await h.http.post(f"/v1/{TENANT}/calls", headers=_bearer(API_KEY))).json()
    url, token, call_id = created["whip_url"], created["token"], created["call_id"]
    caller, good_sdp = await _offer_sdp(h)
    try:

        async def post(body: str | bytes, headers: dict[str, str]) -> Any:
            return await h.http.post(url, content=body, headers=headers)

        r = await post("hello", {**SDP, **_bearer(token)})
        assert r.status_code == 400 and "not an SDP" in r.json()["detail"]
        r = await post("v=0\r\nthis is not sdp\r\n", {**SDP, **_bearer(token)})
        assert r.status_code == 400
        video_only = good_sdp.replace("m=audio", "m=video")
        r = await post(video_only, {**SDP, **_bearer(token)})
        assert r.status_code == 400 and "no audio" in r.json()["detail"]
        r = await post(good_sdp, {"Content-Type": "application/json", **_bearer(token)})
        assert r.status_code == 415
        r = await post("v=0\r\n" + "a=x\r\n" * 2000, {**SDP, **_bearer(token)})
        assert r.status_code == 413
        r = await post(b"\xff\xfe" * 10, {**SDP, **_bearer(token)})
        assert r.status_code == 400

        r = await post(good_sdp, SDP)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        forged, _ = issue_call_token("another-secret-0123456789abcdef-xyz", TENANT, call_id)
        assert (await post(good_sdp, {**SDP, **_bearer(forged)})).status_code == 401
        expired, _ = issue_call_token(SECRET, TENANT, call_id, ttl_s=1, now=time.time() - 60)
        r = await post(good_sdp, {**SDP, **_bearer(expired)})
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        other_tenant, _ = issue_call_token(SECRET, "demo-legal", call_id)
        assert (await post(good_sdp, {**SDP, **_bearer(other_tenant)})).status_code == 403
        other_call, _ = issue_call_token(SECRET, TENANT, "another-call")
        assert (await post(good_sdp, {**SDP, **_bearer(other_call)})).status_code == 403

        # None of the rejected offers consumed the token: the real one connects once.
        r = await post(good_sdp, {**SDP, **_bearer(token)})
        assert r.status_code == 201, r.text
        replay, sdp2 = await _offer_sdp(h)
        try:
            r = await post(sdp2, {**SDP, **_bearer(token)})
        finally:
            await replay.close()
        assert r.status_code == 401 and "already used" in r.json()["detail"]
        assert "location" not in r.headers  # the replay got no session
        # A fresh token for a call that is already connected is no way in either.
        fresh, _ = issue_call_token(SECRET, TENANT, call_id)
        assert (await post(good_sdp, {**SDP, **_bearer(fresh)})).status_code == 409
        patch = await h.http.patch(f"{url}/whatever")
        assert patch.status_code == 405
    finally:
        await caller.close()
    text = caplog.text
    assert "refused a request: call token expired" in text
    assert "refused a request: the call token is for another tenant" in text
    for secret in (token, forged, expired, other_tenant, API_KEY):
        assert secret not in text


async def test_a_rejected_offer_leaves_the_token_for_a_retry(
    start_gateway: Callable[..., Any],
) -> None:
    """A pushed phone whose first offer cannot be answered tries again with the same token."""
    h: GatewayHarness = await start_gateway()
    call_id = "pushed-call-retry"
    token, _ = issue_call_token(SECRET, TENANT, call_id)
    url = f"/v1/{TENANT}/calls/{call_id}/whip"
    caller, good_sdp = await _offer_sdp(h)
    try:
        # Well-formed, but no codec aiortc speaks: refused only in negotiation.
        no_common_codec = re.sub(r"a=rtpmap:(\d+) \S+", r"a=rtpmap:\1 speex/8000", good_sdp)
        r = await h.http.post(url, content=no_common_codec, headers={**SDP, **_bearer(token)})
        assert r.status_code == 400 and "negotiate" in r.json()["detail"], r.text
        r = await h.http.post(url, content=good_sdp, headers={**SDP, **_bearer(token)})
        assert r.status_code == 201, r.text
        # Once answered, the token is spent.
        replay, sdp2 = await _offer_sdp(h)
        try:
            r = await h.http.post(url, content=sdp2, headers={**SDP, **_bearer(token)})
        finally:
            await replay.close()
        assert r.status_code == 401 and "already used" in r.json()["detail"]
    finally:
        await caller.close()


async def test_unknown_tenants_look_like_known_ones_at_the_whip_routes(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    caller, sdp = await _offer_sdp(h)
    try:
        answers = {}
        for tenant in (TENANT, "nobody"):
            r = await h.http.post(f"/v1/{tenant}/calls/c-1/whip", content=sdp, headers=SDP)
            answers[tenant, "offer"] = (r.status_code, r.json()["detail"])
            for method in ("POST", "DELETE"):
                session = f"/v1/{tenant}/calls/c-1/whip/s-unknown"
                r = await h.http.request(method, session, content=sdp, headers=SDP)
                answers[tenant, method] = (r.status_code, r.json()["detail"])
    finally:
        await caller.close()
    assert (
        answers[TENANT, "offer"] == answers["nobody", "offer"] == (401, "missing bearer call token")
    )
    for method in ("POST", "DELETE"):
        assert answers[TENANT, method] == answers["nobody", method] == (404, "no such call session")


async def test_ice_servers_carry_coturn_rest_credentials(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    created = (await h.http.post(f"/v1/{TENANT}/calls", headers=_bearer(API_KEY))).json()
    assert (await h.http.get("/v1/ice-servers")).status_code == 401
    assert (await h.http.get("/v1/ice-servers", headers=_bearer("nope"))).status_code == 401
    by_key = await h.http.get(f"/v1/ice-servers?tenant={TENANT}", headers=_bearer(API_KEY))
    assert by_key.status_code == 200
    r = await h.http.get("/v1/ice-servers", headers=_bearer(created["token"]))
    servers = r.json()["iceServers"]
    assert [s["urls"] for s in servers] == [
        "turn:turn.example.com:3478?transport=udp",
        "turns:turn.example.com:443?transport=tcp",
    ]
    turn = servers[0]
    expiry, _, user = turn["username"].partition(":")
    assert user == created["call_id"]
    assert 3500 < int(expiry) - time.time() <= 3600
    # coturn's use-auth-secret check, done independently here:
    mac = hmac.new(b"turn-shared-secret", turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(mac).decode()
    assert turn["credentialType"] == "password"


async def test_the_load_endpoint_needs_the_ops_token_and_lists_no_calls(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    created = (await h.http.post(f"/v1/{TENANT}/calls", headers=_bearer(API_KEY))).json()
    caller = WhipCaller(h.http)
    try:
        answered = await caller.connect(created["whip_url"], created["token"])
        assert answered.status_code == 201, answered.text
        refused = [
            await h.http.get("/v1/gateway/load", headers=headers)
            for headers in (
                {},
                _bearer("forged-ops-token-0123456789"),
                _bearer(API_KEY),  # a tenant's key sees no other tenant's traffic
                {"Authorization": f"Basic {OPS_TOKEN}"},
            )
        ]
        assert [r.status_code for r in refused] == [401] * 4
        assert all(r.headers["www-authenticate"] == "Bearer" for r in refused)
        mine = {"worker_id": h.gw.worker_id, "active": 1, "capacity": 8, "free": 7}

        async def published() -> bool:  # the registry heartbeat carries the new count
            load = await h.http.get("/v1/gateway/load", headers=_bearer(OPS_TOKEN))
            return load.status_code == 200 and load.json()["workers"] == [mine]

        await wait_until(published, 5, what="this worker's load in the registry")
        load = await h.http.get("/v1/gateway/load", headers=_bearer(OPS_TOKEN))
        body = load.json()
        assert (body["active"], body["capacity"], body["free"]) == (1, 8, 7)
        assert created["call_id"] not in load.text and "sessions" not in body
    finally:
        await caller.close()


async def test_without_an_ops_token_the_load_endpoint_is_closed(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway(metrics_token=None)
    for headers in ({}, _bearer(""), _bearer(OPS_TOKEN), _bearer(API_KEY)):
        assert (await h.http.get("/v1/gateway/load", headers=headers)).status_code == 401
