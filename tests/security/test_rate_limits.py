"""Signaling and device registration are rate limited per tenant, on the running services.

The mesh runs with a limit of ``CALL_RATE_LIMIT`` call creations, WHIP offers and device
registrations per tenant per minute. One tenant (``limited``) spends its budget and gets
``429`` + ``Retry-After``; its ``neighbour`` on the same processes is not limited at all.
Offers count when they carry a valid call token, even with an SDP the gateway refuses, so
the offer budget is spent without connecting calls.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from voicemesh.common.runtime.tokens import issue_call_token

from .conftest import (
    CALL_RATE_LIMIT,
    DEVICE_RATE_LIMIT,
    RATE_WINDOW_S,
    TENANTS,
    SecureMesh,
    record_security,
)

pytestmark = pytest.mark.slow

BAD_SDP = "v=0\r\nthis is not an offer\r\n"


def _retry_after(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    value = int(response.headers["retry-after"])
    assert 1 <= value <= RATE_WINDOW_S
    return value


async def test_call_creation_offers_and_device_registration_are_limited_per_tenant(
    secure_mesh: SecureMesh,
) -> None:
    limited, neighbour = TENANTS["limited"], TENANTS["neighbour"]
    gateway, push = secure_mesh.url("gateway"), secure_mesh.url("push")
    statuses: dict[str, list[int]] = {"calls": [], "offers": [], "devices": []}
    async with httpx.AsyncClient(timeout=10) as http:
        # -- call creation --------------------------------------------------------------
        for _ in range(CALL_RATE_LIMIT + 2):
            r = await http.post(
                f"{gateway}/v1/{limited}/calls", headers=secure_mesh.auth("limited")
            )
            statuses["calls"].append(r.status_code)
        assert statuses["calls"] == [201] * CALL_RATE_LIMIT + [429, 429], statuses
        _retry_after(r)
        assert "too many" in r.json()["detail"]
        r = await http.post(
            f"{gateway}/v1/{neighbour}/calls", headers=secure_mesh.auth("neighbour")
        )
        assert r.status_code == 201, r.text
        # Credentials are checked before the budget: a refused key spends nothing of anyone's.
        r = await http.post(f"{gateway}/v1/{neighbour}/calls", headers=secure_mesh.auth("limited"))
        assert r.status_code == 403

        # -- WHIP offers ----------------------------------------------------------------
        def whip(tenant: str) -> tuple[str, dict[str, str]]:
            call_id = uuid.uuid4().hex
            token, _ = issue_call_token(secure_mesh.call_token_secret, tenant, call_id)
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
            return f"{gateway}/v1/{tenant}/calls/{call_id}/whip", headers

        for _ in range(CALL_RATE_LIMIT + 1):
            url, headers = whip(limited)
            r = await http.post(url, content=BAD_SDP, headers=headers)
            statuses["offers"].append(r.status_code)
        assert statuses["offers"] == [400] * CALL_RATE_LIMIT + [429], statuses
        _retry_after(r)
        url, headers = whip(neighbour)
        assert (await http.post(url, content=BAD_SDP, headers=headers)).status_code == 400

        # -- device registration (push) -------------------------------------------------
        def device(n: int) -> dict[str, str]:
            return {
                "user_id": f"user-{n}",
                "token": f"{n:02x}" * 32,
                "bundle_id": "com.example.app",
            }

        for n in range(DEVICE_RATE_LIMIT + 1):
            r = await http.post(
                f"{push}/v1/{limited}/devices", json=device(n), headers=secure_mesh.auth("limited")
            )
            statuses["devices"].append(r.status_code)
        assert statuses["devices"] == [201] * DEVICE_RATE_LIMIT + [429], statuses
        _retry_after(r)
        # Reading is not registering: the limited tenant still lists its devices.
        r = await http.get(f"{push}/v1/{limited}/devices", headers=secure_mesh.auth("limited"))
        assert r.status_code == 200 and len(r.json()) == DEVICE_RATE_LIMIT
        r = await http.post(
            f"{push}/v1/{neighbour}/devices", json=device(99), headers=secure_mesh.auth("neighbour")
        )
        assert r.status_code == 201, r.text
    limited_count = sum(s.count(429) for s in statuses.values())
    record_security(
        "rate_limits",
        {
            "hostile_inputs": limited_count,
            "rejected": limited_count,
            "server_errors": sum(code >= 500 for s in statuses.values() for code in s),
            "crashes": len(secure_mesh.crashed()),
            "limit_per_window": CALL_RATE_LIMIT,
            "window_s": RATE_WINDOW_S,
        },
    )
    assert not secure_mesh.crashed()
