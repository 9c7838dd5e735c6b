"""A durable consumer in its own process, on a real JetStream: crash safety and dead letters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from voicemesh.common import CallConnected, DeadLetter
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.streams import ConsumerSpec
from voicemesh.testkit.embedded import EmbeddedServer
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess, wait_until

HERE = Path(__file__).parent


def _records(path: Path) -> list[tuple[str, int, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        event_id, delivery, kind = line.split()
        rows.append((event_id, int(delivery), kind))
    return rows


@dataclass
class Lane:
    """One probe durable (its own tenant and purpose) and the file the probe records in."""

    js: JetStreamContext
    nats_url: str
    processes: ProcessTracker
    tenant: str
    spec: ConsumerSpec
    record: Path

    def records(self) -> list[tuple[str, int, str]]:
        return _records(self.record)

    async def start_probe(self, hold_s: float) -> ServiceProcess:
        env = {
            "PYTHONPATH": str(HERE),
            "VOICEMESH_NATS_URL": self.nats_url,
            "VOICEMESH_TENANT": self.tenant,
            "VOICEMESH_TENANTS": f"{self.tenant}:salon",
            "PROBE_RECORD": str(self.record),
            "PROBE_PURPOSE": self.spec.purpose,
            "PROBE_HOLD_S": str(hold_s),
            "PROBE_ACK_WAIT_S": "2",
        }
        probe = self.processes.python_module("probe_service", env, name="probe")
        await probe.wait_healthy()
        return probe

    async def publish(self, event: CallConnected, timeout: float = 5.0) -> None:
        await self.js.publish(
            subjects.call_lifecycle(self.tenant, event.call_id),
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": event.event_id},
            timeout=timeout,
        )

    async def settled(self) -> bool:
        """Nothing pending and nothing awaiting an ack on the durable."""
        info = await self.js.consumer_info("CALLS", self.spec.durable(self.tenant))
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)


@pytest.fixture
async def lane(
    nats: NatsClient,
    nats_url: str,
    processes: ProcessTracker,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> Lane:
    await streams.apply(nats.jetstream(), services=set())
    js = nats.jetstream()
    tenant = unique("t")
    spec = ConsumerSpec("probe", unique("p"), "CALLS", "lifecycle", ack_wait_s=2)
    await js.add_consumer("CALLS", spec.config(tenant))
    return Lane(js, nats_url, processes, tenant, spec, tmp_path / "record.txt")


async def test_sigkill_before_ack_redelivers_exactly_once_more(
    lane: Lane, unique: Callable[[str], str]
) -> None:
    probe = await lane.start_probe(hold_s=60)
    event = CallConnected(tenant=lane.tenant, call_id=unique("c"), source="test")
    await lane.publish(event)
    await wait_until(lane.records, what="first delivery")
    assert lane.records() == [(event.event_id, 1, "call.connected")]

    probe.kill()  # SIGKILL while the handler holds the message unacknowledged
    assert not probe.alive()

    await lane.start_probe(hold_s=0)
    await wait_until(lambda: len(lane.records()) >= 2, timeout=20, what="redelivery")
    await wait_until(lane.settled, timeout=10, what="the redelivered event to be acked")
    assert lane.records() == [
        (event.event_id, 1, "call.connected"),
        (event.event_id, 2, "call.connected"),
    ]


async def test_malformed_event_is_dead_lettered_and_consumer_goes_on(
    lane: Lane, unique: Callable[[str], str]
) -> None:
    js, tenant = lane.js, lane.tenant
    dead = await js.subscribe(subjects.dead_letter(tenant), stream="DLQ")
    probe = await lane.start_probe(hold_s=0)

    bad_call = unique("c")
    bad_subject = subjects.call_lifecycle(tenant, bad_call)
    await js.publish(
        bad_subject, b'{"type": "call.connected", "tenant": ', headers={"Nats-Msg-Id": "bad-1"}
    )
    wrong_schema = json.dumps(
        {
            "type": "call.ended",
            "tenant": tenant,
            "call_id": bad_call,
            "source": "test",
            "reason": "coffee-break",
        }
    )
    await js.publish(bad_subject, wrong_schema.encode(), headers={"Nats-Msg-Id": "bad-2"})
    other_tenant = CallConnected(tenant=unique("other"), call_id=bad_call, source="test")
    await js.publish(bad_subject, other_tenant.model_dump_json().encode(),
                     headers={"Nats-Msg-Id": "bad-3"})  # fmt: skip
    good = CallConnected(tenant=tenant, call_id=unique("c"), source="test")
    await lane.publish(good)

    entries = []
    for _ in range(3):
        msg = await dead.next_msg(timeout=15)
        entries.append(DeadLetter.model_validate_json(msg.data))
        await msg.ack()
    assert {e.subject for e in entries} == {bad_subject}
    assert all(e.tenant == tenant and e.source == "probe" and e.reason for e in entries)
    assert any("reason" in e.reason for e in entries), [e.reason for e in entries]
    assert any(e.payload.startswith('{"type": "call.connected"') for e in entries)
    assert any("tenant mismatch" in e.reason for e in entries)

    await wait_until(
        lambda: any(r[0] == good.event_id for r in lane.records()),
        what="the good event after the bad ones",
    )
    assert [r[0] for r in lane.records()] == [good.event_id]
    assert probe.alive()
    await wait_until(lane.settled, what="bad messages acked, not redelivered")


async def test_nats_restart_is_survived(
    lane: Lane, nats_server: EmbeddedServer, unique: Callable[[str], str]
) -> None:
    probe = await lane.start_probe(hold_s=0)

    nats_server.restart()
    await probe.wait_healthy(timeout=20)
    event = CallConnected(tenant=lane.tenant, call_id=unique("c"), source="test")

    async def published() -> bool:
        try:
            await lane.publish(event, timeout=1)
        except Exception:
            return False
        return True

    await wait_until(published, timeout=15, what="JetStream back after the restart")
    await wait_until(lane.records, timeout=20, what="delivery after NATS restart")
    assert lane.records()[0][0] == event.event_id
    await asyncio.sleep(0)
