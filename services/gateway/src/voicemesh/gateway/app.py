"""The gateway service: WHIP-shaped signaling, call admission, the /demo page.

Routes (``/v1``):

* ``POST /v1/{tenant}/calls``: create a call (tenant API key, or no key for a demo tenant
  from /demo) → ``201 {call_id, token, expires_at, whip_url}``. With the key, an optional
  JSON body ``{"phone": "+1…"}`` vouches for the caller's E.164 number: it rides on the
  call's ``CallConnected``, so crm binds the call to it and sms may text it. Without the
  key it is refused (401): a browser must not choose whose number gets texted;
* ``POST /v1/{tenant}/calls/{call}/whip``: SDP offer with the call token → ``201`` answer,
  ``Location`` (the session) and ``Link: <turn:…>; rel="ice-server"`` headers; a full
  worker forwards the offer to one with room, ``503`` + ``Retry-After`` when all are full;
* ``POST {Location}``: a new offer for the same call (reconnect after a network change);
* ``DELETE {Location}``: hang up; ``PATCH {Location}``: 405 (aiortc cannot ICE-restart);
* ``GET /v1/ice-servers``: the same ICE servers as JSON;
* ``GET /v1/gateway/load``: call counts (never call ids), with the ops bearer token
  (``VOICEMESH_METRICS_TOKEN``; closed without one).

``whip_url`` and ``Location`` are on the public origin (``gateway_public_url``), whichever
worker answers: a request that lands on a worker not holding its call is forwarded inside
the cluster to the one that does (``forward``; docs/gateway-scaling.md).

Call creation and WHIP offers are rate limited per tenant (``ratelimit``): ``429`` +
``Retry-After`` over the limit, other tenants unaffected.

The session URL is an unguessable capability, so hang-up and reconnect work after the
short-lived call token has expired; the token itself connects once (it is spent when an
offer is answered, so a refused offer can be retried with it). Credentials are checked
before the tenant is looked up: an unknown tenant answers as a known one does.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import Header, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse

from voicemesh.common import EndReason, MeshService, Unauthorized, new_call_id
from voicemesh.common.runtime.auth import ApiKeys, authorize_tenant
from voicemesh.common.runtime.telemetry import trace_context_from
from voicemesh.common.runtime.tokens import CallClaims, issue_call_token, verify_call_token
from voicemesh.gateway.bodies import JSON, SDP, NewCall, new_call, read_body, require_type
from voicemesh.gateway.calls import OfferRejected
from voicemesh.gateway.forward import forwarded
from voicemesh.gateway.media import patch_aiortc
from voicemesh.gateway.registry import CallRecord
from voicemesh.gateway.sdp import screen_offer
from voicemesh.gateway.settings import GatewaySettings
from voicemesh.gateway.turn import link_header
from voicemesh.gateway.worker import Gateway, busy, forbidden, unauthorized

__all__ = ["Gateway", "create_app"]

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings, *, api_keys: ApiKeys | None = None) -> MeshService:
    patch_aiortc(settings.receive_prefetch, opus_bitrate=settings.opus_bitrate)
    service = MeshService(
        "gateway",
        settings,
        description="WebRTC gateway: signaling, call audio to and from NATS, the /demo page.",
    )
    gw = Gateway(
        service, settings, api_keys if api_keys is not None else ApiKeys.from_settings(settings)
    )
    service.provide(gw)
    service.on_startup(gw.open)
    service.faststream.on_shutdown(gw.end_calls)
    service.on_shutdown(gw.close)
    http = service.http
    http.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE", "PATCH", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Location", "Link", "Retry-After"],
    )
    demo_html = resources.files("voicemesh.gateway").joinpath("static/demo.html").read_text()

    @http.get("/demo", response_class=HTMLResponse, tags=["demo"])
    async def demo() -> HTMLResponse:
        return HTMLResponse(demo_html)

    @http.get("/v1/demo/tenants", tags=["demo"])
    async def demo_tenants() -> list[dict[str, str]]:
        return [
            {"tenant": t.id, "vertical": t.vertical.value}
            for t in service.tenants
            if t.id in gw.demo_tenants and settings.demo_enabled
        ]

    @http.get("/v1/gateway/load", tags=["ops"])
    async def load(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        gw.check_ops(authorization)
        return await gw.load()

    @http.post(
        "/v1/{tenant}/calls",
        status_code=201,
        tags=["calls"],
        openapi_extra={"requestBody": {"content": {JSON: {"schema": NewCall.model_json_schema()}}}},
    )
    async def create_call(
        tenant: str, request: Request, authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        demo = settings.demo_enabled and tenant in gw.demo_tenants and tenant in service.tenants
        keyed = bool(authorization) or not demo
        if keyed:
            authorize_tenant(gw.keys, service.tenants, tenant, authorization)
        new = await new_call(request)
        if new.phone is not None and not keyed:
            raise unauthorized("only the tenant's API key can vouch for a phone number")
        await gw.rate_limit("call", tenant)
        if not gw.calls.has_room() and await gw.reg.worker_with_room(exclude_self=True) is None:
            raise busy(settings.retry_after_s)
        call_id = new_call_id()
        token, claims = issue_call_token(
            gw.secret(), tenant, call_id, ttl_s=settings.call_token_ttl_s
        )
        # No worker holds the call until one answers its offer.
        await gw.reg.put_call(CallRecord(call_id, tenant, "created", phone=new.phone))
        return JSONResponse(
            {
                "call_id": call_id,
                "token": token,
                "expires_at": datetime.fromtimestamp(claims.expires_at, UTC).isoformat(),
                "whip_url": f"{gw.public_url}/v1/{tenant}/calls/{call_id}/whip",
            },
            status_code=201,
        )

    @http.get("/v1/ice-servers", tags=["calls"])
    async def get_ice_servers(
        tenant: str | None = None, authorization: str | None = Header(default=None)
    ) -> dict[str, Any]:
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise unauthorized("a call token or a tenant API key is required")
        if tenant is not None and gw.keys.allows(tenant, credential):
            user = tenant
        else:
            try:
                user = verify_call_token(gw.secret(), credential).call_id
            except Unauthorized as exc:
                raise unauthorized(str(exc)) from None
        return {"iceServers": [s.as_json() for s in gw.ice(user)]}

    @http.post("/v1/{tenant}/calls/{call_id}/whip", tags=["calls"])
    async def whip_offer(
        tenant: str,
        call_id: str,
        request: Request,
        authorization: str | None = Header(default=None),
    ) -> Response:
        claims = gw.call_token(authorization, tenant, call_id)
        gw.check_tenant(tenant)
        require_type(request, SDP)
        sdp = await _sdp_body(request)
        if not gw.calls.has_room():
            # The worker with room answers (and rate-limits) the offer; one hop at most.
            other = None if forwarded(request) else await gw.reg.worker_with_room(exclude_self=True)
            if other is None:
                raise busy(settings.retry_after_s)
            return await gw.forwarder.forward(request, other.worker_id, other.url, sdp.encode())
        await gw.rate_limit("offer", tenant)
        try:
            sdp = screen_offer(sdp)
        except OfferRejected as exc:
            log.info("rejected a WHIP offer: %s", exc)
            raise HTTPException(400, str(exc)) from None
        record = await gw.reg.get_call(call_id)
        if record is not None and record.tenant != tenant:
            raise forbidden("the call belongs to another tenant")
        hold = await gw.reg.hold_token(claims.token_id, call_id)
        if hold is None:
            raise unauthorized("the call token was already used")
        try:
            response = await _connect(gw, claims, record, sdp, request)
        except BaseException:
            # No answer, no spent token: a pushed phone may offer again with the same one.
            await gw.reg.release_token(claims.token_id, hold)
            raise
        await gw.reg.spend_token(claims.token_id, claims.expires_at)
        return response

    @http.post("/v1/{tenant}/calls/{call_id}/whip/{session_id}", tags=["calls"])
    async def whip_reconnect(
        tenant: str, call_id: str, session_id: str, request: Request
    ) -> Response:
        body = await read_body(request, settings.max_sdp_bytes)
        call = gw.calls.call_for_session(session_id)
        if call is None or call.call_id != call_id or call.tenant != tenant:
            return await _elsewhere(gw, tenant, call_id, request, body)
        require_type(request, SDP)
        sdp = _sdp_text(body)
        try:
            answer = await gw.calls.reconnect(call, screen_offer(sdp))
        except OfferRejected as exc:
            log.info("rejected a reconnect offer: %s", exc)
            raise HTTPException(400, str(exc)) from None
        return _answer(gw, tenant, call_id, call.session_id, answer)

    @http.delete("/v1/{tenant}/calls/{call_id}/whip/{session_id}", tags=["calls"])
    async def whip_delete(tenant: str, call_id: str, session_id: str, request: Request) -> Response:
        call = gw.calls.call_for_session(session_id)
        if call is None or call.call_id != call_id or call.tenant != tenant:
            body = await read_body(request, settings.max_sdp_bytes)
            return await _elsewhere(gw, tenant, call_id, request, body)
        await gw.calls.end(call, EndReason.HANGUP)
        return Response(status_code=200)

    @http.patch("/v1/{tenant}/calls/{call_id}/whip/{session_id}", tags=["calls"])
    async def whip_patch(tenant: str, call_id: str, session_id: str) -> Response:
        return JSONResponse(
            {"detail": "ICE restart is not supported; POST a new offer to this URL instead"},
            status_code=405,
            headers={"Allow": "POST, DELETE"},
        )

    async def _sdp_body(request: Request) -> str:
        return _sdp_text(await read_body(request, settings.max_sdp_bytes))

    return service


def _sdp_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the SDP offer is not UTF-8 text") from None


async def _connect(
    gw: Gateway, claims: CallClaims, record: CallRecord | None, sdp: str, request: Request
) -> Response:
    """Answer the first offer of a call (its token held): the new session's 201."""
    tenant, call_id, service = claims.tenant, claims.call_id, gw.service
    if record is not None and record.state == "ended":
        raise HTTPException(410, "the call has ended")
    if record is not None and record.state == "live":
        raise HTTPException(409, "the call is already connected; reconnect on its Location")
    origin = record.origin if record is not None else "push"
    phone = record.phone if record is not None else None  # the tenant backend's word
    vertical = service.tenants.get(tenant)
    # A pushed phone sends the push's traceparent back: the call joins the trace its
    # request started (absent or malformed, the offer starts a trace of its own).
    parent = trace_context_from({"traceparent": request.headers.get("traceparent", "")})
    with service.telemetry.tracer.start_as_current_span(
        "gateway whip offer", context=parent
    ) as span:
        span.set_attribute("voicemesh.tenant", tenant)
        span.set_attribute("voicemesh.call.origin", origin)
        try:
            call, answer = await gw.calls.connect(
                tenant,
                call_id,
                sdp,
                origin=origin,
                vertical=vertical.vertical.value if vertical else None,
                phone=phone,
            )
        except OfferRejected as exc:
            log.info("could not answer a WHIP offer: %s", exc)
            raise HTTPException(400, str(exc)) from None
    await gw.reg.put_call(
        CallRecord(call_id, tenant, origin, gw.worker_id, gw.worker_url, "live", phone)
    )
    return _answer(gw, call.tenant, call.call_id, call.session_id, answer)


async def _elsewhere(
    gw: Gateway, tenant: str, call_id: str, request: Request, body: bytes
) -> Response:
    """A session this worker does not hold: forward the request to the live worker that
    holds its call (one hop: never a request another worker forwarded here), or 404."""
    record = None if forwarded(request) else await gw.reg.get_call(call_id)
    if (
        record is not None
        and record.tenant == tenant
        and record.state == "live"
        and record.worker_id not in {"", gw.worker_id}
    ):
        owner = await gw.reg.live_worker(record.worker_id)
        if owner is not None:
            return await gw.forwarder.forward(request, owner.worker_id, owner.url, body)
    raise HTTPException(404, "no such call session")


def _answer(gw: Gateway, tenant: str, call_id: str, session_id: str, answer: str) -> Response:
    location = f"{gw.public_url}/v1/{tenant}/calls/{call_id}/whip/{session_id}"
    response = Response(answer, status_code=201, media_type=SDP, headers={"Location": location})
    for server in gw.ice(call_id):
        response.headers.append("Link", link_header(server))
    return response
