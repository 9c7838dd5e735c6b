"""Every HTTP API of every service refuses missing, forged and other-tenant credentials.

The services run as processes (``secure_mesh``). Each service's own ``/openapi.json`` lists
its routes, so a route added later is checked without touching this file:

* a route under ``/v1/{tenant}/`` guarded by the tenant API key answers 401 without a
  bearer key or with a forged one, 403 for another tenant's key, and lets the right key
  through; a tenant that does not exist answers exactly as one that does (401/403, never
  404), so the API cannot be used to enumerate tenants;
* the gateway's WHIP routes take call tokens instead: missing, forged or expired → 401,
  another tenant's or another call's → 403, a token works once (a replay → 401);
* every other route must be on the short public list below (health, metrics, the /demo
  page and its tenant list, the agent's profile names): a new unguarded route fails here.

API keys do not expire (they are revoked by removing them from the Secret); expiry is
checked on call tokens, the only expiring credential.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from voicemesh.common.runtime.tokens import issue_call_token
from voicemesh.testkit.whip import WhipCaller

from .conftest import SERVICES, TENANTS, SecureMesh, record_security

pytestmark = pytest.mark.slow

PUBLIC = {
    ("GET", "/livez"),  # the probes: no data, the kubelet has no key
    ("GET", "/readyz"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/demo"),  # the page; creating a call from it needs a key (demo disabled here)
    ("GET", "/v1/demo/tenants"),
    ("GET", "/v1/profiles"),  # agent: profile names
    ("GET", "/v1/calls"),  # agent: a count of live conversations
}
# Authenticated by something other than the tenant API key.
CALL_TOKEN_ROUTES = {("POST", "/v1/{tenant}/calls/{call_id}/whip")}
CAPABILITY_ROUTES = {  # the unguessable session URL is the credential
    ("POST", "/v1/{tenant}/calls/{call_id}/whip/{session_id}"),
    ("DELETE", "/v1/{tenant}/calls/{call_id}/whip/{session_id}"),
    ("PATCH", "/v1/{tenant}/calls/{call_id}/whip/{session_id}"),
}
SIGNED_WEBHOOKS = {  # Twilio's HMAC signature is the credential; 404 unless provider=twilio
    ("POST", "/v1/{tenant}/twilio/inbound"),
    ("POST", "/v1/{tenant}/twilio/status"),
}
ICE_SERVERS = ("GET", "/v1/ice-servers")  # a tenant key or a call token
# The ops bearer token (VOICEMESH_METRICS_TOKEN) and nothing else; closed when none is set.
OPS_ROUTES = {("GET", "/v1/gateway/load")}

PATH_VALUES = {"call_id": "c-missing", "contact_id": "missing", "session_id": "s-missing"}
DEVICE_TOKEN = "ab" * 32


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    has_body: bool

    def url(self, base: str, tenant: str) -> str:
        path = self.template.replace("{tenant}", tenant).replace("{token}", DEVICE_TOKEN)
        for name, value in PATH_VALUES.items():
            path = path.replace("{" + name + "}", value)
        return base + path


async def _operations(http: httpx.AsyncClient, base: str) -> list[Operation]:
    document = (await http.get(f"{base}/openapi.json")).json()
    found = []
    for template, item in document["paths"].items():
        for method, spec in item.items():
            if method in {"get", "post", "put", "delete", "patch"}:
                found.append(Operation(method.upper(), template, "requestBody" in spec))
    return found


async def _send(
    http: httpx.AsyncClient, op: Operation, url: str, authorization: str | None
) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    body: dict[str, Any] = {"json": {}} if op.has_body else {}
    return await http.request(op.method, url, headers=headers, **body)


@pytest.mark.parametrize("service", SERVICES)
async def test_every_route_refuses_missing_forged_and_other_tenant_keys(
    secure_mesh: SecureMesh, service: str
) -> None:
    base = secure_mesh.url(service)
    tenant, other = TENANTS["a"], TENANTS["b"]
    forged = f"Bearer key-a-{secrets.token_hex(12)}"
    wrong: list[str] = []
    own = secure_mesh.auth("a")["Authorization"]
    guarded = tried = refused = server_errors = 0
    async with httpx.AsyncClient(timeout=10) as http:
        operations = await _operations(http, base)
        assert operations, f"{service} published no routes"
        for op in operations:
            key = (op.method, op.template)
            if key in PUBLIC or key in CALL_TOKEN_ROUTES or key == ICE_SERVERS:
                continue
            url = op.url(base, tenant)
            if key in OPS_ROUTES:
                for label, authorization in (
                    ("no key", None),
                    ("forged", forged),
                    ("tenant key", own),
                ):
                    r = await _send(http, op, url, authorization)
                    tried += 1
                    refused += r.status_code == 401
                    if r.status_code != 401:
                        wrong.append(f"{key} {label}: {r.status_code} (expected 401)")
                continue
            if key in CAPABILITY_ROUTES or key in SIGNED_WEBHOOKS:
                r = await _send(http, op, url, own)
                if r.status_code not in {403, 404, 405}:
                    wrong.append(f"{key}: unknown capability/unsigned → {r.status_code}")
                continue
            if "{tenant}" not in op.template:
                wrong.append(f"{key}: not tenant-scoped and not on the public list")
                continue
            guarded += 1
            nobody = op.url(base, "sec-nobody")
            expectations = [
                ("no key", url, None, {401}),
                ("forged key", url, forged, {401}),
                ("other tenant's key", url, f"Bearer {secure_mesh.key('b')}", {403}),
                ("unknown tenant, no key", nobody, None, {401}),
                ("unknown tenant, forged key", nobody, forged, {401}),
                ("unknown tenant, a real key", nobody, own, {403}),
                ("own key, other tenant's path", op.url(base, other), own, {403}),
                ("wrong scheme", url, f"Basic {secure_mesh.key('a')}", {401}),
            ]
            for label, target, authorization, statuses in expectations:
                r = await _send(http, op, target, authorization)
                tried += 1
                server_errors += r.status_code >= 500
                if r.status_code in statuses:
                    refused += 1
                else:
                    wrong.append(f"{key} {label}: {r.status_code} (expected {statuses})")
            # ... and the right key gets in (404 for the placeholder ids, 422 for empty bodies).
            r = await _send(http, op, url, own)
            if r.status_code in {401, 403} or r.status_code >= 500:
                wrong.append(f"{key} the tenant's own key: {r.status_code} {r.text[:200]}")
    record_security(
        f"credentials_{service}",
        {
            "hostile_inputs": tried,
            "rejected": refused,
            "server_errors": server_errors,
            "crashes": len(secure_mesh.crashed()),
            "routes_guarded": guarded,
        },
    )
    assert not wrong, "\n".join(wrong)
    if service != "agent":
        assert guarded, f"{service} has no tenant-guarded route"
    assert not secure_mesh.crashed()


async def test_call_tokens_refuse_forged_expired_and_other_tenant_and_work_once(
    secure_mesh: SecureMesh,
) -> None:
    base = secure_mesh.url("gateway")
    tenant = TENANTS["a"]
    secret = secure_mesh.call_token_secret
    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        created = await http.post(f"/v1/{tenant}/calls", headers=secure_mesh.auth("a"))
        assert created.status_code == 201, created.text
        call = created.json()
        caller = WhipCaller(http)
        try:
            offer = await caller._offer()
            sdp = {"Content-Type": "application/sdp"}

            async def offer_with(token: str | None) -> httpx.Response:
                headers = {**sdp, **({"Authorization": f"Bearer {token}"} if token else {})}
                return await http.post(call["whip_url"], content=offer, headers=headers)

            forged, _ = issue_call_token("f" * 40, tenant, call["call_id"])
            expired, _ = issue_call_token(secret, tenant, call["call_id"], ttl_s=1,
                                          now=time.time() - 120)  # fmt: skip
            other_tenant, _ = issue_call_token(secret, TENANTS["b"], call["call_id"])
            other_call, _ = issue_call_token(secret, tenant, uuid.uuid4().hex)
            assert (await offer_with(None)).status_code == 401
            # An unknown tenant's WHIP route answers as a known one's (no enumeration).
            nobody = call["whip_url"].replace(f"/v1/{tenant}/", "/v1/sec-nobody/")
            r = await http.post(nobody, content=offer, headers=sdp)
            assert r.status_code == 401, r.text
            assert (await offer_with("not-a-jwt")).status_code == 401
            assert (await offer_with(forged)).status_code == 401
            r = await offer_with(expired)
            assert r.status_code == 401 and "expired" in r.json()["detail"]
            assert (await offer_with(other_tenant)).status_code == 403
            assert (await offer_with(other_call)).status_code == 403
            # The other tenant's path with this call's real token: refused too.
            wrong_path = call["whip_url"].replace(f"/v1/{tenant}/", f"/v1/{TENANTS['b']}/")
            r = await http.post(
                wrong_path,
                content=offer,
                headers={**sdp, "Authorization": f"Bearer {call['token']}"},
            )
            assert r.status_code == 403
            # The real token connects once; none of the refusals above used it up.
            first = await offer_with(call["token"])
            assert first.status_code == 201, first.text
            replay = await offer_with(call["token"])
            assert replay.status_code == 401 and "already used" in replay.json()["detail"]
            assert "location" not in replay.headers
            # ICE servers: a key or a live call token, nothing else.
            ice = "/v1/ice-servers"
            assert (await http.get(ice)).status_code == 401
            assert (
                await http.get(ice, headers={"Authorization": f"Bearer {forged}"})
            ).status_code == 401
            assert (
                await http.get(ice, headers={"Authorization": f"Bearer {expired}"})
            ).status_code == 401
            r = await http.get(
                f"{ice}?tenant={tenant}",
                headers={"Authorization": f"Bearer {secure_mesh.key('b')}"},
            )
            assert r.status_code == 401
            assert (
                await http.get(f"{ice}?tenant={tenant}", headers=secure_mesh.auth("a"))
            ).status_code == 200
            hangup = await http.delete(first.headers["location"])
            assert hangup.status_code == 200
        finally:
            await caller.close()
    # No credential reached a log line.
    logs = "\n".join(secure_mesh.logs().values())
    for credential in (call["token"], forged, expired, secure_mesh.key("a"), secure_mesh.key("b")):
        assert credential not in logs
