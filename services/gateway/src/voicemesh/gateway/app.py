"""The gateway service: WHIP-shaped signaling, call admission, the /demo page.

Routes (``/v1``):

* ``POST /v1/{tenant}/calls``: create a call (tenant API key, or no key for a demo tenant
  from /demo) → ``201 {call_id, token, expires_at, whip_url}``. With the key, an optional
  JSON body ``{"phone": "+1…"}`` vouches for the caller's E.164 number: it rides on the
  call's ``CallConnected``, so crm binds the call to it and sms may text it. Without the
  key it is refused (401): a browser must not choose whose number gets texted;
* ``POST /v1/{tenant}/calls/{call}/whip``: SDP offer with the call token → ``201`` answer,
  ``Location`` (the session) and ``Link: <turn:…>; rel="ice-server"`` headers;
  ``307`` to a worker with room when this one is full, ``503`` + ``Retry-After`` when all are;
* ``POST {Location}``: a new offer for the same call (reconnect after a network change);
* ``DELETE {Location}``: hang up; ``PATCH {Location}``: 405 (aiortc cannot ICE-restart);
* ``GET /v1/ice-servers``: the same ICE servers as JSON; ``GET /v1/gateway/load``.

Call creation and WHIP offers are rate limited per tenant (``ratelimit``): ``429`` +
``Retry-After`` over the limit, other tenants unaffected.

The session URL is an unguessable capability, so hang-up and reconnect work after the
short-lived call token has expired; the token itself connects once (it is spent when an
offer is answered, so a refused offer can be retried with it). Credentials are checked
before the tenant is looked up: an unknown tenant answers as a known one does.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import Header, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from nats.aio.client import Client as NatsClient
from prometheus_client import Gauge
from redis.asyncio import Redis

from voicemesh.common import EndReason, MeshService, Unauthorized, new_call_id
from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.common.runtime.auth import ApiKeys, authorize_tenant
from voicemesh.common.runtime.connection import connect
from voicemesh.common.runtime.ratelimit import SlidingWindowLimiter, too_many_requests
from voicemesh.common.runtime.telemetry import trace_context_from
from voicemesh.common.runtime.tokens import CallClaims, issue_call_token, verify_call_token
from voicemesh.gateway._tasks import LoopLagMonitor
from voicemesh.gateway.bodies import JSON, SDP, NewCall, new_call, read_body, require_type
from voicemesh.gateway.calls import CallManager, OfferRejected
from voicemesh.gateway.media import patch_aiortc
from voicemesh.gateway.registry import CallRecord, Registry, WorkerInfo
from voicemesh.gateway.sdp import screen_offer
from voicemesh.gateway.settings import GatewaySettings
from voicemesh.gateway.turn import ice_servers, link_header

__all__ = ["Gateway", "create_app"]

log = logging.getLogger(__name__)


class Gateway:
    """What the routes share: settings, the call manager, Redis registry and media NATS."""

    def __init__(self, service: MeshService, settings: GatewaySettings, keys: ApiKeys) -> None:
        self.service = service
        self.settings = settings
        self.keys = keys
        self.demo_tenants = {t.id for t in TenantRegistry.demo()}
        self.worker_url = (
            settings.worker_url or f"http://{settings.http_host}:{settings.http_port}"
        ).rstrip("/")
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._nc: NatsClient | None = None
        self.loop_lag = LoopLagMonitor()
        self._redis: Redis | None = None
        self.registry: Registry | None = None
        self.limiters: dict[str, SlidingWindowLimiter] = {}
        self._active = Gauge(
            "voicemesh_gateway_calls_active",
            "calls on this gateway worker",
            registry=service.telemetry.registry,
        )
        self.calls = CallManager(
            nats=self.nats,
            events=service.events,
            delivery=service.delivery,
            max_calls=settings.max_calls,
            reconnect_grace_s=settings.reconnect_grace_s,
            connect_timeout_s=settings.connect_timeout_s,
            media_timeout_s=settings.media_timeout_s,
            max_duration_s=settings.max_duration_s,
            playout_prefill_ms=settings.playout_prefill_ms,
            playout_max_ms=settings.playout_max_ms,
            stun_urls=settings.stun_urls,
            # The calls' last lifecycle events get what the pod's grace leaves after the hang-ups.
            drain_timeout_s=max(1.0, settings.graceful_timeout - 2.0),
            on_count=self._count,
            on_ended=self._ended,
        )

    def nats(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("the gateway's media connection is not open")
        return self._nc

    def _count(self, active: int) -> None:
        self._active.set(active)
        if self.registry is not None:
            self.registry.set_active(active)

    async def _ended(self, call_id: str) -> None:
        if self.registry is not None:
            try:
                await self.registry.set_call_state(call_id, "ended")
            except Exception as exc:
                log.warning("could not mark a call ended in Redis: %s", type(exc).__name__)

    @property
    def reg(self) -> Registry:
        if self.registry is None:
            raise RuntimeError("the call registry is not open")
        return self.registry

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        s = self.settings
        # Caller audio published before the agent's connection is back is lost: retry fast
        # so a NATS restart costs a fraction of a second of speech (tests/chaos).
        self._nc = await connect(
            s, name=f"voicemesh-gateway-media-{self.worker_id}", reconnect_time_wait=0.2
        )
        self._redis = Redis.from_url(s.redis_url)
        self.limiters = {
            action: SlidingWindowLimiter(self._redis, action, limit=limit, window_s=s.rate_window_s)
            for action, limit in (("call", s.call_rate_limit), ("offer", s.offer_rate_limit))
        }
        worker = WorkerInfo(self.worker_id, self.worker_url, 0, s.max_calls, time.time())
        self.registry = Registry(self._redis, worker)
        await self.registry.start()
        await self.calls.start()
        self.loop_lag.start()

    async def end_calls(self) -> None:
        """Runs before the broker stops, so every ``CallEnded`` still reaches JetStream."""
        if self.registry is not None:
            await self.registry.stop()  # first: no other worker sends callers here now
        await self.calls.shutdown()
        if self._nc is not None and self._nc.is_connected:
            await self._nc.flush()

    async def close(self) -> None:
        await self.loop_lag.stop()
        if self.registry is not None:
            await self.registry.stop()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
            self.registry = None
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    # -- auth --------------------------------------------------------------------------------

    def check_tenant(self, tenant: str) -> None:
        """404 for a tenant not served here: only after the caller proved it is that tenant's."""
        if tenant not in self.service.tenants:
            raise HTTPException(404, f"unknown tenant {tenant!r}")

    def call_token(self, authorization: str | None, tenant: str, call_id: str) -> CallClaims:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("missing bearer call token")
        try:
            claims = verify_call_token(self.secret(), token.strip())
        except Unauthorized as exc:
            raise _unauthorized(str(exc)) from None
        if claims.tenant != tenant:
            raise _forbidden("the call token is for another tenant")
        if claims.call_id != call_id:
            raise _forbidden("the call token is for another call")
        return claims

    async def rate_limit(self, action: str, tenant: str) -> None:
        """429 + Retry-After when ``tenant`` is over its ``action`` limit (other tenants not)."""
        limiter = self.limiters.get(action)
        if limiter is None:
            return
        decision = await limiter.hit(tenant)
        if not decision.allowed:
            raise too_many_requests(limiter, decision)

    def secret(self) -> str:
        secret = self.settings.call_token_secret.get_secret_value()
        if len(secret) < 32:
            raise HTTPException(503, "VOICEMESH_CALL_TOKEN_SECRET is not configured")
        return secret

    def ice(self, user: str) -> list[Any]:
        s = self.settings
        return ice_servers(
            stun_urls=s.stun_urls,
            turn_urls=s.turn_urls,
            turn_secret=s.turn_secret.get_secret_value() if s.turn_secret else None,
            user=user,
            ttl_s=s.turn_ttl_s,
        )


def _unauthorized(reason: str) -> HTTPException:
    log.info("refused a request: %s", reason)  # the reason never contains the credential
    return HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})


def _forbidden(reason: str) -> HTTPException:
    log.info("refused a request: %s", reason)
    return HTTPException(403, reason)


def _busy(retry_after: int) -> HTTPException:
    log.warning("refused a call: every worker is at its call limit")
    return HTTPException(
        503, "every gateway worker is at its call limit", headers={"Retry-After": str(retry_after)}
    )


def _redirect(url: str) -> Response:
    # 307 keeps the method and body: the client re-POSTs its offer to the other worker.
    return Response(status_code=307, headers={"Location": url})


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
        allow_origins=["*"],
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
    async def load() -> dict[str, Any]:
        return {
            "worker_id": gw.worker_id,
            "active": gw.calls.active,
            "limit": gw.calls.max_calls,
            "sessions": sorted(gw.calls.calls),
            "loop_lag_p99_ms": round(gw.loop_lag.p99_ms(), 2),
            "frames_out": sum(
                c.agent_track.frames for c in gw.calls.calls.values() if c.agent_track
            ),
            "frames_out_late": sum(
                c.agent_track.late for c in gw.calls.calls.values() if c.agent_track
            ),
        }

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
            raise _unauthorized("only the tenant's API key can vouch for a phone number")
        await gw.rate_limit("call", tenant)
        if gw.calls.has_room():
            url = gw.worker_url
        elif other := await gw.reg.worker_with_room(exclude_self=True):
            url = other.url
        else:
            raise _busy(settings.retry_after_s)
        call_id = new_call_id()
        token, claims = issue_call_token(
            gw.secret(), tenant, call_id, ttl_s=settings.call_token_ttl_s
        )
        await gw.reg.put_call(
            CallRecord(call_id, tenant, "created", worker_url=url, phone=new.phone)
        )
        return JSONResponse(
            {
                "call_id": call_id,
                "token": token,
                "expires_at": datetime.fromtimestamp(claims.expires_at, UTC).isoformat(),
                "whip_url": f"{url}/v1/{tenant}/calls/{call_id}/whip",
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
            raise _unauthorized("a call token or a tenant API key is required")
        if tenant is not None and gw.keys.allows(tenant, credential):
            user = tenant
        else:
            try:
                user = verify_call_token(gw.secret(), credential).call_id
            except Unauthorized as exc:
                raise _unauthorized(str(exc)) from None
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
        await gw.rate_limit("offer", tenant)
        sdp = await _sdp_body(request)
        try:
            sdp = screen_offer(sdp)
        except OfferRejected as exc:
            log.info("rejected a WHIP offer: %s", exc)
            raise HTTPException(400, str(exc)) from None
        if not gw.calls.has_room():
            other = await gw.reg.worker_with_room(exclude_self=True)
            if other is None:
                raise _busy(settings.retry_after_s)
            return _redirect(f"{other.url}/v1/{tenant}/calls/{call_id}/whip")
        record = await gw.reg.get_call(call_id)
        if record is not None and record.tenant != tenant:
            raise _forbidden("the call belongs to another tenant")
        hold = await gw.reg.hold_token(claims.token_id, call_id)
        if hold is None:
            raise _unauthorized("the call token was already used")
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
        call = gw.calls.call_for_session(session_id)
        if call is None or call.call_id != call_id or call.tenant != tenant:
            return await _elsewhere(gw, tenant, call_id, request)
        require_type(request, SDP)
        sdp = await _sdp_body(request)
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
            return await _elsewhere(gw, tenant, call_id, request)
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
        body = await read_body(request, settings.max_sdp_bytes)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(400, "the SDP offer is not UTF-8 text") from None

    return service


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


async def _elsewhere(gw: Gateway, tenant: str, call_id: str, request: Request) -> Response:
    """A session this worker does not hold: send the client to its owner, or 404."""
    record = await gw.reg.get_call(call_id)
    if (
        record is not None
        and record.tenant == tenant
        and record.state == "live"
        and record.worker_id not in {"", gw.worker_id}
        and record.worker_url
    ):
        return _redirect(record.worker_url + request.url.path)
    raise HTTPException(404, "no such call session")


def _answer(gw: Gateway, tenant: str, call_id: str, session_id: str, answer: str) -> Response:
    location = f"{gw.worker_url}/v1/{tenant}/calls/{call_id}/whip/{session_id}"
    response = Response(answer, status_code=201, media_type=SDP, headers={"Location": location})
    for server in gw.ice(call_id):
        response.headers.append("Link", link_header(server))
    return response
