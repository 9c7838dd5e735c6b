"""The state every route of a gateway worker shares, its lifecycle and its credential checks.

``Gateway`` holds the settings, the call manager, the Redis registry of calls and workers,
the media NATS connection and the client that forwards signaling to the other workers.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import time
from typing import Any

from fastapi import HTTPException
from nats.aio.client import Client as NatsClient
from prometheus_client import Gauge
from redis.asyncio import Redis

from voicemesh.common import MeshService, Unauthorized
from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.common.runtime.auth import ApiKeys
from voicemesh.common.runtime.connection import connect
from voicemesh.common.runtime.ratelimit import SlidingWindowLimiter, too_many_requests
from voicemesh.common.runtime.tokens import CallClaims, verify_call_token
from voicemesh.gateway._tasks import LoopLagMonitor
from voicemesh.gateway.advertise import check_bindable
from voicemesh.gateway.calls import CallManager
from voicemesh.gateway.forward import Forwarder
from voicemesh.gateway.registry import CallRecord, Registry, WorkerInfo
from voicemesh.gateway.settings import GatewaySettings
from voicemesh.gateway.turn import ice_servers

__all__ = ["Gateway", "busy", "forbidden", "unauthorized"]

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
        self.public_url = (settings.gateway_public_url or self.worker_url).rstrip("/")
        self.media_bind_ip = settings.media_bind_ip or settings.media_advertise_ip
        self.forwarder = Forwarder(
            self.worker_id,
            timeout_s=settings.forward_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
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
            media_bind_ip=self.media_bind_ip,
            media_advertise_ip=settings.media_advertise_ip,
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
                await self.registry.call_ended(call_id)
            except Exception as exc:
                log.warning("could not mark a call ended in Redis: %s", type(exc).__name__)

    async def _end_lost(self, records: list[CallRecord]) -> None:
        """The calls of a worker that died: their ``CallEnded`` (reason ``error``)."""
        for record in records:
            await self.calls.end_lost(record.tenant, record.call_id, origin=record.origin)

    @property
    def reg(self) -> Registry:
        if self.registry is None:
            raise RuntimeError("the call registry is not open")
        return self.registry

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        s = self.settings
        if self.media_bind_ip:
            check_bindable(self.media_bind_ip)
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
        self.registry = Registry(
            self._redis, worker, lost_after_s=s.worker_lost_s, on_lost=self._end_lost
        )
        self.forwarder.open()
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
        await self.forwarder.close()
        if self.registry is not None:
            await self.registry.stop()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
            self.registry = None
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    # -- auth --------------------------------------------------------------------------------

    def check_ops(self, authorization: str | None) -> None:
        """401 unless ``authorization`` is ``Bearer <VOICEMESH_METRICS_TOKEN>`` (set)."""
        token = self.settings.metrics_token
        scheme, _, presented = (authorization or "").partition(" ")
        if (
            token is None
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(
                presented.strip().encode(), token.get_secret_value().encode()
            )
        ):
            raise unauthorized("the ops bearer token (VOICEMESH_METRICS_TOKEN) is required")

    async def load(self) -> dict[str, Any]:
        """This worker's and every live worker's call counts; no call ids."""
        workers = await self.reg.workers()
        calls = list(self.calls.calls.values())
        return {
            "worker_id": self.worker_id,
            "active": self.calls.active,
            "capacity": self.calls.max_calls,
            "free": max(0, self.calls.max_calls - self.calls.active),
            "loop_lag_p99_ms": round(self.loop_lag.p99_ms(), 2),
            "frames_out": sum(c.agent_track.frames for c in calls if c.agent_track),
            "frames_out_late": sum(c.agent_track.late for c in calls if c.agent_track),
            "workers": [
                {"worker_id": w.worker_id, "active": w.active, "capacity": w.limit, "free": w.free}
                for w in sorted(workers, key=lambda w: w.worker_id)
            ],
        }

    def check_tenant(self, tenant: str) -> None:
        """404 for a tenant not served here: only after the caller proved it is that tenant's."""
        if tenant not in self.service.tenants:
            raise HTTPException(404, f"unknown tenant {tenant!r}")

    def call_token(self, authorization: str | None, tenant: str, call_id: str) -> CallClaims:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("missing bearer call token")
        try:
            claims = verify_call_token(self.secret(), token.strip())
        except Unauthorized as exc:
            raise unauthorized(str(exc)) from None
        if claims.tenant != tenant:
            raise forbidden("the call token is for another tenant")
        if claims.call_id != call_id:
            raise forbidden("the call token is for another call")
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


def unauthorized(reason: str) -> HTTPException:
    log.info("refused a request: %s", reason)  # the reason never contains the credential
    return HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})


def forbidden(reason: str) -> HTTPException:
    log.info("refused a request: %s", reason)
    return HTTPException(403, reason)


def busy(retry_after: int) -> HTTPException:
    log.warning("refused a call: every worker is at its call limit")
    return HTTPException(
        503, "every gateway worker is at its call limit", headers={"Retry-After": str(retry_after)}
    )
