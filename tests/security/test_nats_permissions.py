"""Tenant isolation on a real nats-server loaded with the NATS permission file the
manifests deploy (the ``nats-config`` ConfigMap of ``deploy/k8s/base``).

Tenant A (``acme``) can publish, subscribe, request/reply and use JetStream (its own
durable consumers, through FastStream exactly as the services do) under ``vm.acme.>``;
it cannot publish to, subscribe to, request from, read the inboxes of, or point a consumer
at tenant B (``demo-legal``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import CallConnected
from voicemesh.common.runtime.bus import subscribe_durable
from voicemesh.common.runtime.connection import make_nats_broker
from voicemesh.common.runtime.publisher import JetStreamPublisher
from voicemesh.testkit.fixtures import wait_until
from voicemesh.testkit.mesh import nats_client, nats_settings

from ..conftest import K8S, DeployedNats

A, B = "acme", "demo-legal"
#: A refused publish gets no reply at all; the permissions violation is what proves it.
DENIED_WAIT_S = 0.3


def test_the_configmap_holds_the_generated_auth_conf(
    k8s: ModuleType, deployed_auth_conf: str
) -> None:
    """What ``deployed_nats`` loads is what `kubectl kustomize deploy/k8s/base` ships."""
    docs = k8s.render(K8S / "base")
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and "auth.conf" in d.get("data", {})]
    assert config["data"]["auth.conf"] == deployed_auth_conf


@dataclass
class Mesh:
    nats: DeployedNats
    clients: list[Client] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.nats.url

    async def connect(self, user: str, *, tenant: str | None = None) -> Client:
        """``user``'s connection as its processes open it: a tenant's with its inbox prefix
        (``tenant`` overrides which one), a service's or the admin's with the plain one."""
        errors = self.errors.setdefault(user, [])

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        identity = self.nats.identity(user, tenant=tenant)
        client = await nats_client(
            self.url, name=f"voicemesh-test-{user}", identity=identity, error_cb=on_error
        )
        self.clients.append(client)
        return client

    async def denied(self, user: str, what: str, subject: str) -> None:
        """Wait for the server's permissions violation for ``user`` on ``subject``."""
        # nats-py lower-cases the server's error text.
        expected = f'permissions violation for {what} to "{subject}"'.lower()
        await wait_until(
            lambda: any(expected in e.lower() for e in self.errors.get(user, [])),
            timeout=5,
            what=expected,
        )


@pytest.fixture
async def mesh(deployed_nats: DeployedNats) -> AsyncIterator[Mesh]:
    nats_mesh = Mesh(deployed_nats)
    admin = await nats_mesh.connect("admin")
    await streams.apply(admin.jetstream())
    yield nats_mesh
    for client in nats_mesh.clients:
        if not client.is_closed:
            await client.close()


async def test_every_user_needs_its_password(deployed_nats: DeployedNats) -> None:
    wrong: list[dict[str, Any]] = [{"user": A, "password": "wrong"}, {}]
    for credentials in wrong:
        client = Client()
        with pytest.raises(Exception, match="Authorization Violation"):
            await client.connect(
                deployed_nats.url,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                **credentials,
            )
        await client.close()  # a refused connection still owns a socket


async def test_tenant_publishes_and_subscribes_its_own_subjects(mesh: Mesh) -> None:
    a = await mesh.connect(A)
    subject = subjects.call_control(A, "call-1")
    sub = await a.subscribe(subjects.call_control(A, "*"))
    await a.publish(subject, b"interrupt")
    msg = await sub.next_msg(timeout=2)
    assert (msg.subject, msg.data) == (subject, b"interrupt")
    assert mesh.errors[A] == []


async def test_tenant_cannot_subscribe_to_another_tenant(mesh: Mesh) -> None:
    a, b = await mesh.connect(A), await mesh.connect(B)
    spy = await a.subscribe(subjects.call_transcript(B, "*"))
    await mesh.denied(A, "subscription", subjects.call_transcript(B, "*"))
    await b.publish(subjects.call_transcript(B, "call-9"), b"patient said ...")
    await b.flush()
    with pytest.raises(NatsTimeoutError):
        await spy.next_msg(timeout=DENIED_WAIT_S)
    for pattern in [f"{subjects.ROOT}.>", subjects.audio_in("*", "*"), ">"]:
        await a.subscribe(pattern)
        await mesh.denied(A, "subscription", pattern)


async def test_tenant_cannot_publish_to_another_tenant(mesh: Mesh) -> None:
    a, b = await mesh.connect(A), await mesh.connect(B)
    target = subjects.call_control(B, "call-9")
    sub = await b.subscribe(target)
    await b.flush()
    await a.publish(target, b"hangup")
    await a.flush()
    await mesh.denied(A, "publish", target)
    # Anything A had managed to send would be queued before B's own later message.
    await b.publish(target, b"sentinel")
    msg = await sub.next_msg(timeout=2)
    assert msg.data == b"sentinel"
    # Nor can A forge B's events into JetStream.
    await a.publish(subjects.call_lifecycle(B, "call-9"), b"{}")
    await mesh.denied(A, "publish", subjects.call_lifecycle(B, "call-9"))


async def test_tenant_cannot_request_another_tenants_tools(mesh: Mesh) -> None:
    a, b = await mesh.connect(A), await mesh.connect(B)
    served: list[str] = []

    async def lookup(msg: Msg) -> None:
        served.append(msg.subject)
        await msg.respond(b'{"ok": true}')

    await b.subscribe(subjects.tool(B, "crm", "lookup_contact"), cb=lookup)
    await a.subscribe(subjects.tool(A, "crm", "lookup_contact"), cb=lookup)
    await b.flush()
    await a.flush()
    # Each tenant's agent can call its own tools (request/reply over its own inbox) ...
    reply = await a.request(subjects.tool(A, "crm", "lookup_contact"), b"{}", timeout=2)
    assert reply.data == b'{"ok": true}'
    reply = await b.request(subjects.tool(B, "crm", "lookup_contact"), b"{}", timeout=2)
    assert reply.data == b'{"ok": true}'
    # ... but A's request for B's CRM never reaches B's CRM.
    with pytest.raises((NatsTimeoutError, NoRespondersError)):
        await a.request(subjects.tool(B, "crm", "lookup_contact"), b"{}", timeout=DENIED_WAIT_S)
    await mesh.denied(A, "publish", subjects.tool(B, "crm", "lookup_contact"))
    assert served == [
        subjects.tool(A, "crm", "lookup_contact"),
        subjects.tool(B, "crm", "lookup_contact"),
    ]


async def test_tenant_cannot_read_other_inboxes(mesh: Mesh) -> None:
    a = await mesh.connect(A)
    for pattern in ["_INBOX.>", f"{subjects.inbox_prefix(B)}.>"]:
        await a.subscribe(pattern)
        await mesh.denied(A, "subscription", pattern)
    # With the default prefix a tenant's requests could not even receive their replies.
    plain = await mesh.connect(A, tenant=subjects.ANY)
    await plain.subscribe("_INBOX.x")
    await mesh.denied(A, "subscription", "_INBOX.x")


async def test_tenant_uses_jetstream_through_faststream_like_the_services(mesh: Mesh) -> None:
    """FastStream publishing (JetStreamPublisher) and a durable pull consumer work for tenant A.

    Both the connection and the pull subscriber must use the tenant's inbox prefix
    (FastStream's pull subscribers default to ``_INBOX.`` whatever the connection uses):
    ``make_nats_broker`` and ``subscribe_durable`` see to both.
    """
    identity = mesh.nats.identity(A)
    settings = nats_settings(mesh.url, user=A, password=identity.password, tenant=A)
    broker = make_nats_broker(settings, service="agent", graceful_timeout=5.0)
    spec = streams.consumer("agent", "calls")
    received: list[CallConnected] = []

    @subscribe_durable(broker, spec, A, fetch_timeout=1.0)
    async def on_lifecycle(event: CallConnected) -> None:
        received.append(event)

    await broker.start()
    try:
        event = CallConnected(tenant=A, call_id="call-1", source="test", vertical="healthcare")
        publisher = JetStreamPublisher(lambda: broker.connection)
        await publisher.publish(event, subjects.call_lifecycle(A, "call-1"))
        await wait_until(lambda: received, timeout=10, what="the durable consumer's delivery")
        assert received[0].event_id == event.event_id
    finally:
        await broker.stop()
    admin = await mesh.connect("admin")
    # The consumer was created by the tenant itself, filtered to its own lifecycle events,
    # and the delivery was acked.
    info = await admin.jetstream().consumer_info("CALLS", spec.durable(A))
    assert info.config.filter_subject == subjects.call_lifecycle(A, "*")
    assert info.num_ack_pending == 0 and info.delivered.stream_seq >= 1
    assert mesh.errors.get(A, []) == []


async def _api(
    client: Client, subject: str, body: dict[str, Any], timeout: float = 2.0
) -> dict[str, Any]:
    reply = await client.request(subject, json.dumps(body).encode(), timeout=timeout)
    result: dict[str, Any] = json.loads(reply.data)
    return result


async def test_tenant_cannot_point_a_consumer_at_another_tenant(mesh: Mesh) -> None:
    a = await mesh.connect(A)
    durable = f"agent-calls-{A}"
    b_filter = subjects.call_lifecycle(B, "*")
    config = {
        "durable_name": durable,
        "name": durable,
        "filter_subject": b_filter,
        "ack_policy": "explicit",
        "deliver_policy": "all",
    }
    # Naming B's subjects in the API subject is refused by the permissions ...
    create_for_b = f"$JS.API.CONSUMER.CREATE.CALLS.{durable}.{b_filter}"
    with pytest.raises((NatsTimeoutError, NoRespondersError)):
        await _api(a, create_for_b, {"stream_name": "CALLS", "config": config}, DENIED_WAIT_S)
    await mesh.denied(A, "publish", create_for_b)
    # ... and hiding B's filter in the body of A's permitted subject is refused by JetStream.
    own = f"$JS.API.CONSUMER.CREATE.CALLS.{durable}.{subjects.call_lifecycle(A, '*')}"
    response = await _api(a, own, {"stream_name": "CALLS", "config": config})
    assert response["error"]["err_code"] == 10131, response  # filter does not match subject
    # The legacy create (no filter in the subject) and B's durables are out of reach.
    for subject in [
        f"$JS.API.CONSUMER.DURABLE.CREATE.CALLS.{durable}",
        f"$JS.API.CONSUMER.INFO.CALLS.agent-calls-{B}",
        f"$JS.API.CONSUMER.MSG.NEXT.CALLS.agent-calls-{B}",
        "$JS.API.STREAM.DELETE.CALLS",
        "$JS.API.STREAM.PURGE.CALLS",
    ]:
        with pytest.raises((NatsTimeoutError, NoRespondersError)):
            await _api(a, subject, {}, DENIED_WAIT_S)
        await mesh.denied(A, "publish", subject)


async def test_edge_services_reach_every_tenant(mesh: Mesh) -> None:
    gateway = await mesh.connect("gateway")
    a = await mesh.connect(A)
    sub = await a.subscribe(subjects.audio_out(A, "call-1"))
    await a.flush()
    await gateway.publish(subjects.audio_out(A, "call-1"), b"\x00" * 8)
    assert (await sub.next_msg(timeout=2)).data == b"\x00" * 8
    await gateway.subscribe(subjects.call_transcript("*", "*"))
    await gateway.flush()
    await asyncio.sleep(0)  # let any async error arrive with the flush's PONG
    assert mesh.errors["gateway"] == []
