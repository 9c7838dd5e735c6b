"""``voicemesh dlq list`` and ``voicemesh dlq replay``, run as an operator runs them, against
a real nats-server: a message dead-lettered because its handler failed permanently is
replayed once the handler is fixed and is handled; a masked (PHI) dead letter is never
replayed; the depth gauge follows.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from prometheus_client import CollectorRegistry

from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.errors import InvalidMessage
from voicemesh.common.contracts.events import CallEnded, EndReason
from voicemesh.common.runtime.delivery import Delivery
from voicemesh.common.runtime.dlq import DlqDepth
from voicemesh.common.runtime.publisher import JetStreamPublisher

SALON, CLINIC = "salon-b", "clinic-a"  # CLINIC is healthcare-class: its payloads are masked


async def voicemesh(nats_url: str, *args: str) -> tuple[int, str, str]:
    """Run the ``voicemesh`` command line in its own process, as an operator would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEMESH_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicemesh.cli", *args, "--nats-url", nats_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _lane(js: JetStreamContext, tenant: str) -> Any:
    durable = f"lane-{tenant}"
    await js.add_consumer(
        "CALLS",
        ConsumerConfig(
            durable_name=durable,
            filter_subject=subjects.call_lifecycle(tenant, "*"),
            ack_wait=30,
            max_deliver=3,
        ),
    )
    return await js.pull_subscribe_bind(durable, stream="CALLS")


async def _handle_one(
    lane: Any, delivery: Delivery, handler: Callable[[bytes], Awaitable[None]]
) -> None:
    """One round of a service's pull lane under the one delivery policy."""
    (msg,) = await lane.fetch(1, timeout=10)
    try:
        await handler(msg.data)
    except Exception as exc:
        await delivery.settle(msg, exc, consumer="lane", max_deliver=3)
    else:
        await msg.ack()


def _ended(tenant: str, call_id: str) -> bytes:
    event = CallEnded(tenant=tenant, call_id=call_id, source="test", reason=EndReason.HANGUP)
    return event.model_dump_json().encode()


async def test_dead_letter_listed_then_replayed_after_the_fix_and_handled(
    nats: NatsClient, nats_url: str
) -> None:
    js = nats.jetstream()
    await streams.apply(js)
    delivery = Delivery("crm", JetStreamPublisher(nats), handles_phi={CLINIC}.__contains__)
    registry = CollectorRegistry()
    depth = DlqDepth(nats.jetstream, [SALON, CLINIC], registry)
    handled: list[CallEnded] = []

    async def broken(_body: bytes) -> None:  # a handler bug: every CallEnded is "invalid"
        raise InvalidMessage("unsupported end reason 'hangup'")

    async def fixed(body: bytes) -> None:
        handled.append(CallEnded.model_validate_json(body))

    salon, clinic = await _lane(js, SALON), await _lane(js, CLINIC)
    await js.publish(subjects.call_lifecycle(SALON, "call-7"), _ended(SALON, "call-7"))
    body = json.loads(_ended(CLINIC, "call-8"))
    body["detail"] = "caller said her number is +1 415 555 0100"
    await js.publish(subjects.call_lifecycle(CLINIC, "call-8"), json.dumps(body).encode())
    await _handle_one(salon, delivery, broken)
    await _handle_one(clinic, delivery, broken)
    await depth.refresh()
    assert registry.get_sample_value("voicemesh_dlq_depth", {"tenant": SALON}) == 1
    assert registry.get_sample_value("voicemesh_dlq_depth", {"tenant": CLINIC}) == 1

    code, out, err = await voicemesh(nats_url, "dlq", "list", "--tenant", SALON)
    assert code == 0, err
    assert "unsupported end reason" in out and subjects.call_lifecycle(SALON, "call-7") in out
    assert "call-7" in out and '"reason"' not in out  # listed, but no payload by default
    code, out, _ = await voicemesh(nats_url, "dlq", "list", "--tenant", CLINIC, "--payload")
    assert code == 0 and "[phone]" in out and "555" not in out

    # The bug is fixed and deployed; the operator replays the tenant's dead letters.
    code, out, err = await voicemesh(nats_url, "dlq", "replay", "--tenant", SALON, "--all")
    assert code == 0, err
    assert "replayed 1" in out
    await _handle_one(salon, delivery, fixed)
    assert [(e.tenant, e.call_id) for e in handled] == [(SALON, "call-7")]
    # Gone from the DLQ, and the gauge says so.
    code, out, _ = await voicemesh(nats_url, "dlq", "list", "--tenant", SALON)
    assert code == 0 and "call-7" not in out
    await depth.refresh()
    assert registry.get_sample_value("voicemesh_dlq_depth", {"tenant": SALON}) == 0

    # A masked payload is not the original: refused, and kept.
    code, out, err = await voicemesh(nats_url, "dlq", "replay", "--tenant", CLINIC, "--all")
    assert code == 1 and "redacted" in (out + err)
    await depth.refresh()
    assert registry.get_sample_value("voicemesh_dlq_depth", {"tenant": CLINIC}) == 1
