"""The one delivery policy and the one publisher, on a real nats-server with JetStream.

A raw pull lane (what push and audit run) settles its failures through ``Delivery``: a
transient failure comes back with backoff; a permanent one is dead-lettered with its reason
(PHI masked for healthcare-class tenants) and then terminated; a dead letter that cannot be
stored leaves the message to come back. Message ids are tenant-scoped.
"""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext

from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.errors import InvalidMessage, UnavailableError
from voicemesh.common.contracts.events import CallEnded, DeadLetter, EndReason
from voicemesh.common.contracts.ids import DERIVED_ID_LENGTH, derived_id, message_id
from voicemesh.common.runtime.delivery import REDACTED_HEADER, Delivery, backoff, retry_delay
from voicemesh.common.runtime.publisher import JetStreamPublisher

CLINIC, SALON = "clinic-a", "salon-b"


async def _lane(js: JetStreamContext, tenant: str, name: str) -> object:
    await js.add_consumer(
        "CALLS",
        ConsumerConfig(
            durable_name=name,
            filter_subject=subjects.call_lifecycle(tenant, "*"),
            ack_wait=30,
            max_deliver=3,
        ),
    )
    return await js.pull_subscribe_bind(name, stream="CALLS")


async def _dead_letters(js: JetStreamContext, tenant: str) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    sub = await js.subscribe(subjects.dead_letter(tenant), ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            found.append(DeadLetter.model_validate_json(msg.data))
    except TimeoutError:
        return found
    finally:
        await sub.unsubscribe()


def _ended(tenant: str, call_id: str = "call-1") -> CallEnded:
    return CallEnded(tenant=tenant, call_id=call_id, source="test", reason=EndReason.HANGUP)


def test_retry_policy_backs_off_then_gives_up() -> None:
    assert [backoff(n) for n in (1, 2, 3, 6, 9)] == [1.0, 2.0, 4.0, 30.0, 30.0]
    assert retry_delay(UnavailableError("db"), 1, 3) == 1.0
    assert retry_delay(UnavailableError("db"), 3, 3) is None  # the last delivery
    assert retry_delay(InvalidMessage("bad"), 1, 3) is None  # permanent: at once
    assert retry_delay(RuntimeError("bug"), None, 3) is None  # core NATS: no redelivery
    throttled = UnavailableError("429 from the provider")
    throttled.retry_after_s = 12.0  # the provider's Retry-After
    assert retry_delay(throttled, 1, 3) == 12.0


def test_derived_ids_are_stable_tenant_scoped_and_short() -> None:
    longest_call = "c" * 64
    first = derived_id("acme", longest_call, "missed-sms")
    assert first == derived_id("acme", longest_call, "missed-sms")
    assert first != derived_id("other", longest_call, "missed-sms")
    assert len(first) == DERIVED_ID_LENGTH <= 64
    # Accepted as an event id whatever the inputs' length (a call id of 54+ characters
    # once made "<call>-missed-sms" too long).
    CallEnded(tenant="acme", call_id=longest_call, source="t", reason=EndReason.HANGUP,
              event_id=first)  # fmt: skip
    with pytest.raises(ValueError, match="at least one part"):
        derived_id("acme")


async def test_message_ids_never_deduplicate_across_tenants(nats: NatsClient) -> None:
    js = nats.jetstream()
    await streams.apply(js)
    publisher = JetStreamPublisher(nats)
    first, second = _ended(CLINIC), _ended(SALON)
    second = second.model_copy(update={"event_id": first.event_id})  # the same event id
    await publisher.publish(first, subjects.call_lifecycle(CLINIC, "call-1"))
    await publisher.publish(second, subjects.call_lifecycle(SALON, "call-1"))
    await publisher.publish(first, subjects.call_lifecycle(CLINIC, "call-1"))  # a retry
    info = await js.stream_info("CALLS")
    assert info.state.messages == 2
    assert message_id(CLINIC, first.event_id) != message_id(SALON, first.event_id)


async def test_transient_failure_is_redelivered_and_permanent_one_dead_lettered(
    nats: NatsClient,
) -> None:
    js = nats.jetstream()
    await streams.apply(js)
    publisher = JetStreamPublisher(nats)
    delivery = Delivery("test", publisher, handles_phi=lambda tenant: tenant == CLINIC)
    lane = await _lane(js, CLINIC, "lane-clinic")
    body = _ended(CLINIC).model_dump(mode="json")
    body["detail"] = "call me on +1 415 555 0100"  # PHI in a payload that fails validation
    await js.publish(subjects.call_lifecycle(CLINIC, "call-1"), json.dumps(body).encode())

    (msg,) = await lane.fetch(1, timeout=5)  # type: ignore[attr-defined]
    await delivery.settle(msg, UnavailableError("db down"), consumer="lane-clinic", max_deliver=3)
    (again,) = await lane.fetch(1, timeout=5)  # type: ignore[attr-defined]
    assert again.metadata.num_delivered == 2

    await delivery.settle(again, InvalidMessage("extra field"), consumer="lane-clinic",
                          max_deliver=3)  # fmt: skip
    (entry,) = await _dead_letters(js, CLINIC)
    stored = await js.get_last_msg("DLQ", subjects.dead_letter(CLINIC))
    assert stored.headers == {**(stored.headers or {}), REDACTED_HEADER: "1"}  # never replayed
    assert entry.reason == "extra field" and entry.consumer == "lane-clinic"
    assert entry.deliveries == 2
    assert "555" not in entry.payload and "[phone]" in entry.payload
    with pytest.raises(TimeoutError):  # terminated: never delivered again
        await lane.fetch(1, timeout=1.5)  # type: ignore[attr-defined]
    await lane.unsubscribe()  # type: ignore[attr-defined]  # else drain waits out its 30 s


async def test_a_dead_letter_that_cannot_be_stored_leaves_the_message_to_come_back(
    nats: NatsClient,
) -> None:
    js = nats.jetstream()
    await streams.apply(js)
    await js.delete_stream("DLQ")  # the dead letter has nowhere to go
    delivery = Delivery("test", JetStreamPublisher(nats, timeout=2.0))
    lane = await _lane(js, SALON, "lane-salon")
    await js.publish(subjects.call_lifecycle(SALON, "call-2"), b"{not json")
    (msg,) = await lane.fetch(1, timeout=5)  # type: ignore[attr-defined]
    await delivery.settle(msg, InvalidMessage("not JSON"), consumer="lane-salon", max_deliver=3)
    (again,) = await lane.fetch(1, timeout=10)  # type: ignore[attr-defined]
    assert again.data == b"{not json"
    assert again.metadata.num_delivered == 2
