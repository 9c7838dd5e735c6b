"""NATS for tests and benches as the services meet it.

Connections are opened through the runtime's ``connect`` (credentials, inbox prefix, name,
reconnect policy), streams are provisioned the way ``voicemesh streams apply`` does, and a
nats-server can be loaded with a permission file and its users' passwords in its
environment, as the deployed one is (``deploy/k8s/nats_auth.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.client import JetStreamContext

from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import AnyEvent, Envelope, decode_event
from voicemesh.common.contracts.ids import message_id
from voicemesh.common.runtime.connection import RECONNECT_WAIT_S, Callback, connect
from voicemesh.common.runtime.publisher import MSG_ID
from voicemesh.common.runtime.settings import NatsSettings
from voicemesh.testkit.embedded import EmbeddedServer, start_nats

__all__ = [
    "EventTypesSeen",
    "NatsIdentity",
    "nats_client",
    "nats_settings",
    "provision",
    "publish_event",
    "publish_events",
    "start_secured_nats",
    "stored_events",
]


@dataclass(frozen=True)
class NatsIdentity:
    """Who a process is to NATS: its user, password and the tenant it serves (``*``: all)."""

    user: str
    password: str
    tenant: str = subjects.ANY

    def env(self) -> dict[str, str]:
        """The ``VOICEMESH_*`` variables a service process reads this identity from."""
        return {
            "VOICEMESH_NATS_USER": self.user,
            "VOICEMESH_NATS_PASSWORD": self.password,
            "VOICEMESH_TENANT": self.tenant,
        }


def nats_settings(
    url: str, *, user: str | None = None, password: str | None = None, tenant: str = subjects.ANY
) -> NatsSettings:
    """Who a test's connection is to the server at ``url``, from the arguments alone (not
    the environment: a developer's ``VOICEMESH_NATS_*`` cannot leak into a test)."""
    return NatsSettings.model_validate(
        {"nats_urls": [url], "nats_user": user, "nats_password": password, "tenant": tenant}
    )


async def nats_client(
    url: str,
    *,
    name: str = "voicemesh-test",
    identity: NatsIdentity | None = None,
    **callbacks: Callback,
) -> NatsClient:
    """A nats-py client opened the way every voicemesh process opens one (``connect``)."""
    if identity is None:
        settings = nats_settings(url)
    else:
        settings = nats_settings(
            url, user=identity.user, password=identity.password, tenant=identity.tenant
        )
    return await connect(settings, name=name, reconnect_time_wait=RECONNECT_WAIT_S, **callbacks)


async def provision(
    url: str, *, identity: NatsIdentity | None = None, services: set[str] | None = None
) -> None:
    """Create the mesh's streams (and the consumers of ``services``; default: all)."""
    client = await nats_client(url, name="voicemesh-test-streams", identity=identity)
    try:
        await streams.apply(client.jetstream(), services=services)
    finally:
        await client.close()


def start_secured_nats(
    data_dir: Path, auth_conf: str, passwords: Mapping[str, str]
) -> EmbeddedServer:
    """``nats-server -js`` loaded with ``auth_conf``; ``passwords`` (variable -> password)
    are in its environment, where the file's ``$VM_NATS_PASSWORD_*`` references read them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "auth.conf").write_text(auth_conf)
    (data_dir / "nats.conf").write_text("include ./auth.conf\n")
    return start_nats(data_dir, config_file=data_dir / "nats.conf", env=passwords)


async def publish_event(
    target: NatsClient | JetStreamContext,
    event: Envelope,
    subject: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> PubAck:
    """Publish ``event`` to JetStream and wait for its ack, with the ``Nats-Msg-Id`` the
    services give it (``message_id``: tenant-scoped), so JetStream deduplicates a test's
    publish exactly as it would a service's."""
    js = target.jetstream() if isinstance(target, NatsClient) else target
    return await js.publish(
        subject,
        event.model_dump_json().encode(),
        timeout=timeout,
        headers={**(headers or {}), MSG_ID: message_id(event.tenant, event.event_id)},
    )


async def publish_events(
    target: NatsClient | JetStreamContext,
    events: Sequence[tuple[str, Envelope]],
    *,
    in_flight: int = 250,
) -> None:
    """``publish_event`` each (subject, event), ``in_flight`` awaiting their acks at once."""
    js = target.jetstream() if isinstance(target, NatsClient) else target
    for start in range(0, len(events), in_flight):
        chunk = events[start : start + in_flight]
        await asyncio.gather(*(publish_event(js, event, subject) for subject, event in chunk))


async def stored_events(nc: NatsClient, subject: str) -> list[AnyEvent]:
    """Every event JetStream holds on ``subject`` (durable, unlike a core subscription)."""
    sub = await nc.jetstream().pull_subscribe(
        subject, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE)
    )
    found: list[AnyEvent] = []
    try:
        while True:
            try:
                batch = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                return found
            found += [decode_event(m.data) for m in batch]
    finally:
        await sub.unsubscribe()


class EventTypesSeen:
    """The ``type`` of every JSON message on one tenant's subjects while it listens, with a
    subject it was seen on: what the registry (``contracts.events``) must hold.

    A core subscription on ``vm.<tenant>.>`` sees what is published to JetStream too (a
    stream stores messages published on its subjects); binary audio is skipped.
    """

    def __init__(self, nc: NatsClient, tenant: str) -> None:
        self.nc = nc
        self.tenant = tenant
        self.types: dict[str, str] = {}
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(
            subjects.all_tenant_subjects(self.tenant), cb=self._seen
        )
        await self.nc.flush()

    async def _seen(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:  # audio frames, and anything else that is not JSON
            return
        if isinstance(body, dict) and isinstance(body.get("type"), str):
            self.types.setdefault(body["type"], msg.subject)

    async def stop(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()
