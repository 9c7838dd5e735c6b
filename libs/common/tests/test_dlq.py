"""Dead letters after they are stored (``runtime.dlq``) on a real nats-server: the depth
gauge as ``/metrics`` shows it, reading by id, and which payloads may never be replayed."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client import CollectorRegistry, generate_latest

from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.errors import InvalidMessage
from voicemesh.common.runtime import dlq
from voicemesh.common.runtime.delivery import MAX_DLQ_PAYLOAD, Delivery
from voicemesh.common.runtime.publisher import JetStreamPublisher

CLINIC, SALON, QUIET = "clinic-a", "salon-b", "quiet-c"


async def test_depth_gauge_per_tenant_and_what_may_be_replayed(nats: NatsClient) -> None:
    js = nats.jetstream()
    await streams.apply(js)
    delivery = Delivery("sms", JetStreamPublisher(nats), handles_phi={CLINIC}.__contains__)
    bodies = {
        CLINIC: b'{"to": "+14155550100"}',
        SALON: b'{"to": "+14155550100"}',
    }
    stored = [*bodies.items()]
    stored += [(SALON, b"\xff\xfe not utf-8"), (SALON, b"x" * (MAX_DLQ_PAYLOAD + 1))]
    for tenant, body in stored:
        subject = subjects.sms_outbound(tenant)
        exc = InvalidMessage("bad")
        entry = delivery.dead_letter(
            subject=subject, consumer="sms-jobs", body=body, exc=exc, deliveries=1
        )
        await delivery.store_dead_letter(entry)

    registry = CollectorRegistry()
    depth = dlq.DlqDepth(nats.jetstream, [CLINIC, SALON, QUIET], registry, interval_s=0.1)
    await depth.refresh()
    exposed = generate_latest(registry).decode()  # what a service's /metrics returns
    assert f'voicemesh_dlq_depth{{tenant="{SALON}"}} 3.0' in exposed
    assert f'voicemesh_dlq_depth{{tenant="{CLINIC}"}} 1.0' in exposed
    assert f'voicemesh_dlq_depth{{tenant="{QUIET}"}} 0.0' in exposed
    await depth.start()  # the owned refresher starts and stops cleanly
    await depth.stop()

    (clinic,) = await dlq.read(js, CLINIC)
    assert clinic.redacted and "555" not in clinic.entry.payload
    salon = await dlq.read(js, SALON)
    assert [s.redacted for s in salon] == [False, False, False]
    assert [s.not_replayable() for s in salon] == [
        None,
        "its payload was not UTF-8 and was stored with replacements",
        "its payload was truncated",
    ]
    assert [s.seq for s in await dlq.read(js, SALON, ids=[salon[2].seq])] == [salon[2].seq]
    for refused in (clinic, salon[1], salon[2]):
        with pytest.raises(ValueError, match="cannot be replayed"):
            await dlq.replay(js, refused)
    # A replay gets a new message id (the original's would be dropped as a duplicate) that
    # is the same on a retry (a second replay after a failed removal is dropped instead).
    assert dlq.replay_id(salon[0]) == dlq.replay_id(salon[0]) != salon[0].entry.event_id
    await dlq.replay(js, salon[0])
    await depth.refresh()
    assert registry.get_sample_value("voicemesh_dlq_depth", {"tenant": SALON}) == 2
