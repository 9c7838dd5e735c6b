"""The push service application: ``create_app(settings)`` wires it, ``__main__`` runs it.

HTTP: the device registry API. NATS: one lane per tenant (``lanes.TenantLane``: its own
durable pull consumer on the CALLS stream and its own bounded window, so one tenant's slow
pushes never hold up another's), handling lifecycle events concurrently; the ``push-jobs``
consumer takes ring and cancel jobs from the PUSH work queue; a background task turns passed
ring deadlines into missed calls. Lifecycle events and texts go out through one
``runtime.outbox.Outbox``: per call in order, retried until JetStream has stored them.
"""

from __future__ import annotations

import contextlib

from nats.aio.client import Client as NatsClient
from redis.asyncio import Redis

from voicemesh.common import MeshService, subscribe_durable
from voicemesh.common.contracts import streams
from voicemesh.common.contracts.events import Envelope, PushJob
from voicemesh.common.runtime.auth import ApiKeys
from voicemesh.common.runtime.connection import connect
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.delivery import Delivery
from voicemesh.common.runtime.outbox import Outbox
from voicemesh.common.runtime.publisher import JetStreamPublisher
from voicemesh.common.runtime.ratelimit import SlidingWindowLimiter
from voicemesh.push.api import device_router
from voicemesh.push.apns import ApnsPool, load_credentials
from voicemesh.push.calls import CallStore
from voicemesh.push.devices import DeviceRegistry
from voicemesh.push.lanes import LifecycleLanes, TenantLane
from voicemesh.push.ringer import Ringer, RingTimeouts
from voicemesh.push.settings import PushSettings
from voicemesh.push.voip import VoipPushes

__all__ = ["PushComponents", "create_app"]

#: On shutdown, how long queued events may take to reach JetStream.
OUTBOX_DRAIN_S = 5.0


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
    #: Publishes on the lanes' connection: open before the broker starts and after it
    #: stops, so the lanes and the ring timeouts can publish for as long as they run.
    events: JetStreamPublisher | None = None
    #: What the ringer publishes: per call in order, retried until stored.
    outbox: Outbox | None = None
    lanes: LifecycleLanes | None = None

    async def publish(self, event: Envelope, subject: str) -> None:
        """Publish ``event`` and wait until JetStream has stored it (retrying meanwhile)."""
        if self.outbox is None:
            raise RuntimeError("the push service's NATS connection is not open")
        await self.outbox.publish(event.call_id or event.event_id, event, subject)


def create_app(settings: PushSettings, *, api_keys: ApiKeys | None = None) -> MeshService:
    service = MeshService(
        "push",
        settings,
        description="VoIP push service: device registry and APNs pushes that ring CallKit.",
    )
    parts = PushComponents()
    service.provide(parts)
    parts.db = service.database()
    parts.redis = Redis.from_url(settings.redis_url)
    parts.devices = DeviceRegistry(parts.db, parts.redis, cache_ttl_s=settings.device_cache_ttl_s)
    parts.apns = ApnsPool(
        load_credentials(
            settings.apns_credentials_dir,
            settings.apns_credentials.get_secret_value() if settings.apns_credentials else None,
        ),
        settings,
    )
    parts.calls = CallStore(parts.redis)
    parts.ringer = Ringer(
        settings,
        tenants=service.tenants,
        devices=parts.devices,
        calls=parts.calls,
        voip=VoipPushes(settings, apns=parts.apns, devices=parts.devices, calls=parts.calls),
        publish=parts.publish,
    )
    parts.timeouts = RingTimeouts(parts.ringer, lease_s=settings.ring_claim_lease_s)
    keys = api_keys if api_keys is not None else ApiKeys.from_settings(settings)
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
        service.tenants.served(job.tenant)
        await parts.ringer.job(job)

    @service.on_startup
    async def open_resources() -> None:
        await parts.calls.load_scripts()
        parts.nats = await connect(settings, name="voicemesh-push-lanes")
        js = parts.nats.jetstream()
        parts.events = JetStreamPublisher(parts.nats)
        parts.outbox = Outbox(parts.events, name="push-lifecycle")
        # The service's policy (its PHI rules), dead-lettering on the lanes' connection.
        delivery = Delivery("push", parts.events, service.delivery.handles_phi)
        spec = streams.consumer("push", "calls")
        parts.lanes = LifecycleLanes(
            [
                TenantLane(
                    tenant,
                    js,
                    spec,
                    parts.ringer,
                    delivery=delivery,
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
        if parts.outbox is not None:
            # What the lanes and the timeouts left queued; a miss not stored by then is
            # still leased in Redis and is finished by the next replica to claim it.
            await parts.outbox.drain(timeout=OUTBOX_DRAIN_S)
        if parts.events is not None:
            await parts.events.drain(timeout=2)
        if parts.nats is not None and not parts.nats.is_closed:
            # The lanes have stopped and NAKed what they held: send those acks and NAKs,
            # then close (drain would wait up to 30 s on subscriptions nobody reads now).
            with contextlib.suppress(Exception):
                await parts.nats.flush(timeout=2)
            await parts.nats.close()
        parts.apns.close()
        await parts.redis.aclose()

    return service
