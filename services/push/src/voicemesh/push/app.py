"""The push service application: ``create_app(settings)`` wires it, ``__main__`` runs it.

HTTP: the device registry API. NATS: one lane per tenant (``lanes.TenantLane``: its own
durable pull consumer on the CALLS stream and its own bounded window, so one tenant's slow
pushes never hold up another's), handling lifecycle events concurrently; the ``push-jobs``
consumer takes ring and cancel jobs from the PUSH work queue; a background task turns passed
ring deadlines into missed calls.
"""

from __future__ import annotations

import contextlib
from typing import Any

import nats as nats_py
from nats.aio.client import Client as NatsClient
from redis.asyncio import Redis

from voicemesh.common import MeshService, subscribe_durable
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.errors import UnknownTenant
from voicemesh.common.contracts.events import Envelope, PushJob
from voicemesh.common.runtime.auth import ApiKeys
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.ratelimit import SlidingWindowLimiter
from voicemesh.push.api import device_router
from voicemesh.push.apns import ApnsPool, load_credentials
from voicemesh.push.calls import CallStore
from voicemesh.push.devices import DeviceRegistry
from voicemesh.push.lanes import JetStreamEvents, LifecycleLanes, TenantLane
from voicemesh.push.ringer import Ringer, RingTimeouts
from voicemesh.push.settings import PushSettings

__all__ = ["PushComponents", "create_app"]


class PushComponents:
    """What ``create_app`` opens at startup; tests reach the pieces through it."""

    db: Database
    redis: Redis
    devices: DeviceRegistry
    apns: ApnsPool
    calls: CallStore
    ringer: Ringer
    timeouts: RingTimeouts
    nats: NatsClient | None = None
    events: JetStreamEvents | None = None
    lanes: LifecycleLanes | None = None

    async def publish(self, event: Envelope, subject: str) -> None:
        if self.events is None:
            raise RuntimeError("the push service's NATS connection is not open")
        await self.events.publish(event, subject)


def create_app(settings: PushSettings, *, api_keys: ApiKeys | None = None) -> MeshService:
    service = MeshService(
        "push",
        settings,
        description="VoIP push service: device registry and APNs pushes that ring CallKit.",
    )
    parts = PushComponents()
    service.push = parts  # type: ignore[attr-defined]
    parts.db = Database(settings.database_url.get_secret_value())
    parts.redis = Redis.from_url(settings.redis_url)
    parts.devices = DeviceRegistry(parts.db, parts.redis, cache_ttl_s=settings.device_cache_ttl_s)
    parts.apns = ApnsPool(
        load_credentials(
            settings.apns_credentials_dir,
            settings.apns_credentials.get_secret_value() if settings.apns_credentials else None,
        ),
        host=settings.apns_host,
        port=settings.apns_port,
        ca_file=settings.apns_ca_file,
        timeout_s=settings.apns_timeout_s,
        connections=settings.apns_connections,
    )
    parts.calls = CallStore(parts.redis)
    parts.ringer = Ringer(
        settings,
        tenants=service.tenants,
        devices=parts.devices,
        apns=parts.apns,
        calls=parts.calls,
        publish=parts.publish,
    )
    parts.timeouts = RingTimeouts(parts.ringer)
    keys = api_keys if api_keys is not None else ApiKeys.from_env()
    registrations = SlidingWindowLimiter(
        parts.redis,
        "device registration",
        limit=settings.device_rate_limit,
        window_s=settings.device_rate_window_s,
    )
    service.http.include_router(device_router(parts.devices, keys, service.tenants, registrations))
    tenants = [settings.tenant] if settings.tenant != "*" else service.tenants.ids()

    @subscribe_durable(service.broker, streams.consumer("push", "jobs"), settings.tenant)
    async def on_job(job: PushJob) -> None:
        """The PUSH work queue (``vm.<t>.push.voip``): ring or cancel one call's pushes.
        (The broker's middleware has already refused a job naming another tenant.)"""
        if job.tenant not in service.tenants:
            raise UnknownTenant(f"tenant {job.tenant!r} is not served here")
        await parts.ringer.job(job)

    @service.on_startup
    async def open_resources() -> None:
        await parts.db.create_all()
        await parts.calls.load_scripts()
        parts.nats = await nats_py.connect(**_nats_options(settings))
        js = parts.nats.jetstream()
        parts.events = JetStreamEvents(js)
        spec = streams.consumer("push", "calls")
        parts.lanes = LifecycleLanes(
            [
                TenantLane(
                    tenant,
                    js,
                    spec,
                    parts.ringer,
                    publish=parts.publish,
                    tracer=service.telemetry.tracer,
                    window=settings.workers,
                )
                for tenant in tenants
            ]
        )
        await parts.lanes.start()
        parts.timeouts.start()

    @service.on_shutdown
    async def close_resources() -> None:
        if parts.lanes is not None:
            await parts.lanes.stop()
        await parts.timeouts.stop()
        if parts.nats is not None and not parts.nats.is_closed:
            # The lanes have stopped and NAKed what they held: send those acks and NAKs,
            # then close (drain would wait up to 30 s on subscriptions nobody reads now).
            with contextlib.suppress(Exception):
                await parts.nats.flush(timeout=2)
            await parts.nats.close()
        parts.apns.close()
        await parts.redis.aclose()
        await parts.db.close()

    return service


def _nats_options(settings: PushSettings) -> dict[str, Any]:
    """The lanes' own nats-py connection, with the broker's servers and credentials."""
    options: dict[str, Any] = {
        "servers": settings.nats_urls,
        "name": "voicemesh-push-lanes",
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "connect_timeout": 3,
        "inbox_prefix": subjects.inbox_prefix(settings.tenant),
    }
    if settings.nats_creds_file:
        options["user_credentials"] = settings.nats_creds_file
    elif settings.nats_user and settings.nats_password:
        options |= {
            "user": settings.nats_user,
            "password": settings.nats_password.get_secret_value(),
        }
    elif settings.nats_token:
        options["token"] = settings.nats_token.get_secret_value()
    return options
