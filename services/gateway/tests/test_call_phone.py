"""A tenant backend vouches for its caller's number when it creates a call.

``POST /v1/{tenant}/calls`` with ``{"phone": "+1…"}`` and the tenant's API key: the number
rides on the call's ``CallConnected``, where crm binds the call to it (so sms may text it).
Without the key (the /demo path) a phone is refused: a browser must not choose whose number
gets texted. A malformed body is a 4xx that says what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from voicemesh.testkit.fixtures import wait_until
from voicemesh.testkit.whip import WhipCaller

from .conftest import API_KEY, TENANT, GatewayHarness

PHONE = "+15555550123"
KEY = {"Authorization": f"Bearer {API_KEY}"}


async def test_a_vouched_phone_rides_on_call_connected(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    created = await h.http.post(f"/v1/{TENANT}/calls", headers=KEY, json={"phone": PHONE})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"call_id", "token", "expires_at", "whip_url"}  # the number stays home
    call_id = body["call_id"]
    caller = WhipCaller(h.http)
    try:
        response = await caller.connect(body["whip_url"], body["token"])
        assert response.status_code == 201, response.text

        def connected() -> list[Any]:
            return [e for e in h.lifecycle.events if e.call_id == call_id]

        events = await wait_until(connected, 15, what="call.connected")
        assert [(e.type, e.phone, e.direction) for e in events] == [
            ("call.connected", PHONE, "inbound")
        ]
        # A call created without one carries none.
        plain = (await h.http.post(f"/v1/{TENANT}/calls", headers=KEY)).json()
        other = WhipCaller(h.http)
        try:
            assert (await other.connect(plain["whip_url"], plain["token"])).status_code == 201

            def plain_connected() -> list[Any]:
                return [e for e in h.lifecycle.events if e.call_id == plain["call_id"]]

            assert [e.phone for e in await wait_until(plain_connected, 15, what="connected")] == [
                None
            ]
        finally:
            await other.close()
    finally:
        await caller.close()


async def test_the_demo_path_cannot_name_a_phone(start_gateway: Callable[..., Any]) -> None:
    h: GatewayHarness = await start_gateway(tenants=f"{TENANT}:salon,acme:salon")
    refused = await h.http.post(f"/v1/{TENANT}/calls", json={"phone": PHONE})
    assert refused.status_code == 401, refused.text
    assert "API key" in refused.json()["detail"]
    # Credentials first: a tenant that is not a demo one, or none at all, says the same.
    for tenant in ("acme", "nobody"):
        r = await h.http.post(f"/v1/{tenant}/calls", json={"phone": PHONE})
        assert r.status_code == 401, (tenant, r.text)
    # The demo page's own request (no body, or no phone in it) still creates its call.
    assert (await h.http.post(f"/v1/{TENANT}/calls")).status_code == 201
    assert (await h.http.post(f"/v1/{TENANT}/calls", json={})).status_code == 201
    assert h.gw.calls.active == 0


async def test_a_malformed_phone_or_body_is_refused_with_the_reason(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    url = f"/v1/{TENANT}/calls"
    for phone in ("555-0123", "15555550123", "+05555550123", "+1555", PHONE + "\n", 15555550123):
        r = await h.http.post(url, headers=KEY, json={"phone": phone})
        assert r.status_code == 422, (phone, r.text)
        assert "phone" in r.text and "E.164" in r.text, (phone, r.text)
    r = await h.http.post(url, headers=KEY, json={"phone": PHONE, "name": "Maria"})
    assert r.status_code == 422 and "name" in r.text, r.text
    json_headers = {**KEY, "Content-Type": "application/json"}
    for raw in (b"{not json", b'["+15555550123"]', b"\xff\xfe"):
        r = await h.http.post(url, headers=json_headers, content=raw)
        assert r.status_code in {400, 422}, (raw, r.text)
    r = await h.http.post(url, headers={**KEY, "Content-Type": "text/plain"}, content=PHONE)
    assert r.status_code == 415, r.text
    r = await h.http.post(url, headers=json_headers, content=b'{"phone": "' + b"1" * 5000 + b'"}')
    assert r.status_code == 413, r.text
