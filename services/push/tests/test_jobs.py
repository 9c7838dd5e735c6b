"""The PUSH work queue (``vm.<t>.push.voip``): ring and cancel jobs at a real APNs simulator."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NatsClient

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import PushJob, new_call_id
from voicemesh.push.app import PushComponents
from voicemesh.testkit.fixtures import dead_letters, wait_until

from .conftest import PushHarness

MakePush = Callable[..., Awaitable[PushHarness]]


async def _job(nats: NatsClient, job: PushJob, subject_tenant: str | None = None) -> None:
    await nats.jetstream().publish(
        subjects.push_voip(subject_tenant or job.tenant),
        job.model_dump_json().encode(),
        headers={"Nats-Msg-Id": job.event_id},
    )


async def _with_phone(
    make_push: MakePush, user: str, tenants: int = 1
) -> tuple[PushHarness, str, str]:
    """A push service whose first tenant's ``user`` has one phone: (harness, tenant, token)."""
    push = await make_push(tenants=tenants)
    tenant, token = await push.phone(user)
    return push, tenant, token


async def test_a_ring_job_rings_then_a_cancel_job_ends_the_ring(
    make_push: MakePush, nats: NatsClient
) -> None:
    push, tenant, token = await _with_phone(make_push, "bea")
    call_id = new_call_id()
    ring = PushJob(
        tenant=tenant,
        call_id=call_id,
        source="test",
        user_id="bea",
        caller_name="Bella Salon",
        handle="salon",
        expires_at=datetime.now(UTC) + timedelta(seconds=20),
    )
    await _job(nats, ring)
    [rang] = await push.sim.wait_for(1, token=token)
    assert rang.payload["action"] == "ring" and rang.payload["call_id"] == call_id
    assert rang.payload["callerName"] == "Bella Salon" and rang.payload["call_token"]
    await wait_until(lambda: push.of_type("call.ringing", call_id), 10, what="CallRinging")

    await _job(nats, ring.model_copy(update={"event_id": "cancel-1", "kind": "cancel"}))
    await push.sim.wait_for(2, token=token)
    assert [p.payload["action"] for p in push.sim.pushes(token)] == ["ring", "cancel"]
    # The ring stopped: its deadline passes without a missed call.
    call = await push.service.get(PushComponents).calls.get(tenant, call_id)
    assert call is not None and call.state == "ended"


async def test_a_cancel_job_reaches_the_user_for_a_call_rung_elsewhere(
    make_push: MakePush, nats: NatsClient
) -> None:
    push, tenant, token = await _with_phone(make_push, "cy")
    cancel = PushJob(
        tenant=tenant, call_id=new_call_id(), source="test", user_id="cy", kind="cancel"
    )
    await _job(nats, cancel)
    [ended] = await push.sim.wait_for(1, token=token)
    assert ended.payload["action"] == "cancel" and "call_token" not in ended.payload
    assert not push.of_type("call.ringing", cancel.call_id)


async def test_expired_forged_and_malformed_jobs_are_dead_lettered_and_jobs_go_on(
    make_push: MakePush, nats: NatsClient
) -> None:
    push, tenant, token = await _with_phone(make_push, "dee", tenants=2)
    other = push.tenants[1]
    letters = await dead_letters(nats, tenant)
    late = PushJob(
        tenant=tenant,
        call_id=new_call_id(),
        source="test",
        user_id="dee",
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    await _job(nats, late)
    forged = PushJob(tenant=other, call_id=new_call_id(), source="test", user_id="dee")
    await _job(nats, forged, subject_tenant=tenant)
    await nats.jetstream().publish(subjects.push_voip(tenant), b"{not json")
    broken = {**json.loads(late.model_dump_json()), "event_id": "b1", "kind": "vibrate"}
    await nats.jetstream().publish(subjects.push_voip(tenant), json.dumps(broken).encode())
    await wait_until(lambda: len(letters) == 4, 15, what="four dead letters")
    reasons = " | ".join(letter.reason for letter in letters)
    assert "expired" in reasons and "tenant mismatch" in reasons and "kind" in reasons, reasons
    assert all(letter.consumer.startswith("push-jobs") for letter in letters), letters
    assert not push.sim.pushes(token)  # none of them rang

    good = PushJob(tenant=tenant, call_id=new_call_id(), source="test", user_id="dee")
    await _job(nats, good)
    await push.sim.wait_for(1, token=token)
