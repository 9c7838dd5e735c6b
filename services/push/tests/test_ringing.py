"""CallRequested → VoIP push at a real APNs simulator (HTTP/2 + TLS), and every APNs answer."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import jwt
import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.apnssim.behaviours import Behaviour, token_for
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.errors import InvalidMessage
from voicemesh.common.contracts.events import (
    CallEnded,
    CallRequested,
    EndReason,
    new_call_id,
)
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.runtime.tokens import verify_call_token
from voicemesh.push.app import PushComponents
from voicemesh.push.voip import build_payload
from voicemesh.testkit.fixtures import dead_letters, wait_until

from .conftest import BUNDLE, SECRET, PushHarness

MakePush = Callable[..., Awaitable[PushHarness]]


async def _request(
    nats: NatsClient, tenant: str, user: str, call_id: str | None = None, **fields: object
) -> CallRequested:
    event = CallRequested(
        tenant=tenant, call_id=call_id or new_call_id(), source="test", user_id=user, **fields
    )
    await nats.jetstream().publish(
        subjects.call_lifecycle(tenant, event.call_id),
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": event.event_id},
    )
    return event


async def test_device_api_validates_and_guards(make_push: MakePush) -> None:
    push = await make_push(tenants=2)
    a, b = push.tenants
    token = token_for(Behaviour.OK)
    created = await push.register(a, "u1", token)
    assert created.status_code == 201 and created.json()["active"] is True
    bad = await push.register(a, "u1", "not-hex" * 10)
    assert bad.status_code == 422
    short = await push.register(a, "u1", "ab" * 8)
    assert short.status_code == 422
    wrong_key = await push.http.get(
        f"/v1/{a}/devices", headers={"Authorization": f"Bearer {push.api_keys[b]}"}
    )
    assert wrong_key.status_code == 403
    assert (await push.http.get(f"/v1/{a}/devices")).status_code == 401
    listed = await push.http.get(
        f"/v1/{a}/devices?user_id=u1", headers={"Authorization": f"Bearer {push.api_keys[a]}"}
    )
    assert [d["token"] for d in listed.json()] == [token]
    auth = {"Authorization": f"Bearer {push.api_keys[a]}"}
    assert (await push.http.delete(f"/v1/{a}/devices/{token}", headers=auth)).status_code == 204
    assert (await push.http.delete(f"/v1/{a}/devices/{token}", headers=auth)).status_code == 404


async def test_call_requested_rings_with_apples_headers_and_a_reportable_payload(
    make_push: MakePush, nats: NatsClient
) -> None:
    push = await make_push()
    tenant, token = await push.phone("alice")
    sent_at = time.time()
    call = await _request(nats, tenant, "alice", caller_name="Ada from Salon", handle="salon")

    [received] = await push.sim.wait_for(1, token=token)
    assert received.status == 200
    assert received.push_type == "voip"
    assert received.topic == f"{BUNDLE}.voip"
    assert received.priority == "10"
    assert received.expiration is not None and abs(int(received.expiration) - sent_at) < 5
    assert received.key_id == push.keys[tenant].key_id
    assert received.team_id == push.keys[tenant].team_id
    payload = received.payload
    assert received.apns_id == str(uuid.uuid5(uuid.UUID(payload["uuid"]), token))
    assert payload["uuid"].replace("-", "") == call.call_id
    assert payload["callerName"] == "Ada from Salon" and payload["handle"] == "salon"
    assert payload["hasVideo"] is False and payload["aps"] == {}
    assert payload["call_id"] == call.call_id and payload["tenant"] == tenant
    assert payload["signaling_url"] == (
        f"https://gw.example.test/v1/{tenant}/calls/{call.call_id}/whip"
    )
    claims = verify_call_token(SECRET, payload["call_token"], tenant=tenant, call_id=call.call_id)
    assert claims.expires_at == payload["call_token_expires_at"]
    assert received.payload_bytes <= 5120

    await wait_until(lambda: push.of_type("call.ringing", call.call_id), 10)
    [ringing] = push.of_type("call.ringing", call.call_id)
    assert ringing.devices == 1  # type: ignore[union-attr]


async def test_apns_rejections_deactivate_tokens_respecting_the_410_timestamp(
    make_push: MakePush, nats: NatsClient
) -> None:
    push = await make_push()
    tenant = push.tenants[0]
    bad = token_for(Behaviour.BAD_DEVICE_TOKEN)
    wrong_topic = token_for(Behaviour.NOT_FOR_TOPIC)
    gone = token_for(Behaviour.UNREGISTERED)
    gone_before_reregistration = token_for(Behaviour.UNREGISTERED)
    expired = token_for(Behaviour.EXPIRED_TOKEN)
    for token in (bad, wrong_topic, gone, gone_before_reregistration, expired):
        assert (await push.register(tenant, "bob", token)).status_code == 201
    # APNs saw this token go a minute before the app registered it again: keep it.
    push.sim.set_token(
        gone_before_reregistration, unregistered_at_ms=int(time.time() * 1000) - 60_000
    )

    call = await _request(nats, tenant, "bob", ring_timeout_s=5)
    await wait_until(lambda: push.of_type("call.failed", call.call_id), 10)
    [failed] = push.of_type("call.failed", call.call_id)
    assert failed.reason == "push_rejected"  # type: ignore[union-attr]
    assert "410 Unregistered" in failed.detail and "400 BadDeviceToken" in failed.detail  # type: ignore[union-attr]

    listed = await push.http.get(
        f"/v1/{tenant}/devices", headers={"Authorization": f"Bearer {push.api_keys[tenant]}"}
    )
    state = {d["token"]: (d["active"], d["deactivated_reason"]) for d in listed.json()}
    assert state[bad] == (False, "BadDeviceToken")
    assert state[wrong_topic] == (False, "DeviceTokenNotForTopic")
    assert state[gone] == (False, "Unregistered")
    assert state[expired] == (False, "ExpiredToken")
    assert state[gone_before_reregistration] == (True, None)
    # Each was tried once: these answers are final, never retried.
    assert len(push.sim.pushes(bad)) == 1 and len(push.sim.pushes(gone)) == 1


async def test_throttling_and_server_errors_retry_with_backoff_only_within_the_ring_window(
    make_push: MakePush, nats: NatsClient
) -> None:
    push = await make_push(apns_retry_base_s=0.1, apns_retry_max_s=0.4)
    tenant = push.tenants[0]
    throttled = token_for(Behaviour.THROTTLED)
    broken = token_for(Behaviour.SERVER_ERROR)
    for token in (throttled, broken):
        await push.register(tenant, "carol", token)
    started = time.monotonic()
    call = await _request(nats, tenant, "carol", ring_timeout_s=1.5)
    await wait_until(lambda: push.of_type("call.failed", call.call_id), 10)
    elapsed = time.monotonic() - started
    [failed] = push.of_type("call.failed", call.call_id)
    assert failed.reason == "push_unavailable"  # type: ignore[union-attr]
    assert elapsed < 3.0
    for token in (throttled, broken):
        attempts = push.sim.pushes(token)
        assert 2 <= len(attempts) <= 12
        last = max(a.received_at for a in attempts)
        first = min(a.received_at for a in attempts)
        assert last - first < 1.5  # nothing sent after the call stopped being able to ring
        gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(attempts)]
        assert all(g >= 0.05 for g in gaps)  # backoff, not a hot loop

    # A server error that clears up on the third try rings the phone.
    flaky = token_for(Behaviour.FLAKY)
    await push.register(tenant, "dave", flaky)
    call = await _request(nats, tenant, "dave", ring_timeout_s=10)
    await wait_until(lambda: push.of_type("call.ringing", call.call_id), 10)
    assert [p.status for p in push.sim.pushes(flaky)] == [503, 503, 200]


async def test_a_push_that_never_gets_an_answer_times_out(
    make_push: MakePush, nats: NatsClient
) -> None:
    push = await make_push(apns_timeout_s=0.3, apns_retry_base_s=0.1, apns_retry_max_s=0.2)
    tenant = push.tenants[0]
    silent = token_for(Behaviour.NEVER_ANSWERS)
    fine = token_for(Behaviour.OK)
    await push.register(tenant, "erin", silent)
    call = await _request(nats, tenant, "erin", ring_timeout_s=1.2)
    await wait_until(lambda: push.of_type("call.failed", call.call_id), 10)
    [failed] = push.of_type("call.failed", call.call_id)
    assert "Timeout" in failed.detail  # type: ignore[union-attr]
    assert 2 <= len(push.sim.pushes(silent)) <= 5
    # The connection the silent pushes used still carries other pushes.
    await push.register(tenant, "frank", fine)
    call = await _request(nats, tenant, "frank")
    await wait_until(lambda: push.of_type("call.ringing", call.call_id), 10)
    assert push.sim.connections_opened == 1


async def test_expired_provider_token_is_renewed_and_the_push_goes_through(
    make_push: MakePush, nats: NatsClient
) -> None:
    push = await make_push()
    push.sim.max_token_age_s = 1.0
    tenant, token = await push.phone("gina")
    first = await _request(nats, tenant, "gina")
    await wait_until(lambda: push.of_type("call.ringing", first.call_id), 10)
    await wait_until(
        lambda: time.time() - int(push.sim.received[-1].received_at) > 2.05, 5, what="token age"
    )
    second = await _request(nats, tenant, "gina")
    await wait_until(lambda: push.of_type("call.ringing", second.call_id), 10)
    statuses = [(p.status, p.reason) for p in push.sim.pushes(token)]
    assert statuses == [(200, None), (403, "ExpiredProviderToken"), (200, None)]
    assert push.sim.connections_opened == 2  # the renewed token came on a new connection


async def test_unanswered_call_is_missed_cancelled_and_texted(
    make_push: MakePush, nats: NatsClient
) -> None:
    push = await make_push()
    tenant, token = await push.phone("hana")
    call = await _request(nats, tenant, "hana", ring_timeout_s=0.8, phone="+15551234567")
    await wait_until(lambda: push.of_type("call.missed", call.call_id), 10)
    await wait_until(lambda: push.of_type("sms.job", call.call_id), 5)
    [sms] = push.of_type("sms.job", call.call_id)
    assert sms.to == "+15551234567" and sms.purpose == "missed_call"  # type: ignore[union-attr]
    await push.sim.wait_for(2, token=token)
    actions = [p.payload["action"] for p in push.sim.pushes(token)]
    assert actions == ["ring", "cancel"]

    # No phone number: missed, but no text.
    call = await _request(nats, tenant, "hana", ring_timeout_s=0.5)
    await wait_until(lambda: push.of_type("call.missed", call.call_id), 10)
    assert not push.of_type("sms.job", call.call_id)


async def test_a_call_with_the_longest_call_id_rings_is_missed_and_texted(
    make_push: MakePush, nats: NatsClient
) -> None:
    """Every event derived from a call has an id within the limit, whatever the call id
    (``f"{call_id}-missed-sms"`` was not, for a call id of 54 characters or more)."""
    push = await make_push()
    tenant, _token = await push.phone("jun")
    letters = await dead_letters(nats, tenant)
    call_id = f"{new_call_id()}-{'r' * 31}"
    assert len(call_id) == 64
    await _request(nats, tenant, "jun", call_id, ring_timeout_s=0.8, phone="+15551234567")
    await wait_until(lambda: push.of_type("call.missed", call_id), 10)
    await wait_until(lambda: push.of_type("sms.job", call_id), 5)
    [ringing] = push.of_type("call.ringing", call_id)
    [missed] = push.of_type("call.missed", call_id)
    [sms] = push.of_type("sms.job", call_id)
    assert sms.purpose == "missed_call"  # type: ignore[union-attr]
    assert sms.event_id == derived_id(tenant, call_id, "missed-sms")
    assert len({ringing.event_id, missed.event_id, sms.event_id}) == 3
    assert not letters


async def test_cancel_before_answer_sends_a_second_push_and_no_missed_call(
    make_push: MakePush, nats: NatsClient
) -> None:
    push = await make_push()
    tenant, token = await push.phone("ivan")
    call = await _request(nats, tenant, "ivan", ring_timeout_s=2)
    await wait_until(lambda: push.of_type("call.ringing", call.call_id), 10)
    ended = CallEnded(
        tenant=tenant, call_id=call.call_id, source="test", reason=EndReason.CANCELLED
    )
    await nats.jetstream().publish(
        subjects.call_lifecycle(tenant, call.call_id), ended.model_dump_json().encode()
    )
    pushes = await push.sim.wait_for(2, token=token)
    cancel = pushes[1].payload
    assert cancel["action"] == "cancel" and cancel["uuid"] == pushes[0].payload["uuid"]
    assert "call_token" not in cancel
    await wait_until(lambda: time.time() > call.occurred_at.timestamp() + 2.6, 5)
    assert not push.of_type("call.missed", call.call_id)


async def test_one_tenants_silent_apns_does_not_slow_another_and_keys_never_cross(
    make_push: MakePush, nats: NatsClient
) -> None:
    window = 4
    push = await make_push(tenants=2, apns_timeout_s=2.0, workers=window)
    quiet, busy = push.tenants
    hanging = 3 * window
    for n in range(hanging):
        await push.register(busy, f"b{n}", token_for(Behaviour.NEVER_ANSWERS))
    fine = token_for(Behaviour.OK)
    await push.register(quiet, "q", fine)
    for n in range(hanging):
        await _request(nats, busy, f"b{n}", ring_timeout_s=4)
    running = push.service.get(PushComponents).lanes
    assert running is not None
    lanes = running.lanes
    await wait_until(lambda: lanes[busy].in_flight == window, 5, what="busy lane full")

    # The silent tenant fills only its own window; the rest of its backlog waits in
    # JetStream, not in a queue the other tenant's events would stand behind.
    js = nats.jetstream()
    spec = streams.consumer("push", "calls")
    info = await js.consumer_info(spec.stream, spec.durable(busy))
    assert info.num_ack_pending == window
    assert info.num_pending == hanging - window

    waits = []
    for _ in range(10):
        started = time.monotonic()
        call = await _request(nats, quiet, "q")
        await wait_until(lambda: push.of_type("call.ringing", call.call_id), 10)  # noqa: B023
        waits.append(time.monotonic() - started)
    assert max(waits) < 0.5, waits
    assert lanes[busy].in_flight == window  # still hanging the whole time
    assert len({p.token for p in push.sim.received if p.token != fine}) == window

    by_tenant_key = {push.keys[t].key_id: t for t in push.tenants}
    for received in push.sim.received:
        owner = by_tenant_key[received.key_id or ""]
        expected = quiet if received.token == fine else busy
        assert owner == expected


async def test_requests_for_users_without_devices_fail_clearly(
    make_push: MakePush, nats: NatsClient
) -> None:
    push = await make_push()
    call = await _request(nats, push.tenants[0], "nobody")
    await wait_until(lambda: push.of_type("call.failed", call.call_id), 10)
    assert push.of_type("call.failed", call.call_id)[0].reason == "no_devices"  # type: ignore[union-attr]


def test_payload_stays_within_apples_voip_limit() -> None:
    payload = build_payload(
        tenant="t", call_id="c" * 64, caller_name="x" * 128, handle="h" * 128, call_token="j" * 600
    )
    assert payload["uuid"]
    with pytest.raises(InvalidMessage, match="5120"):
        build_payload(tenant="t", call_id="c", caller_name="n", handle="h", call_token="j" * 6000)
    token = jwt.encode({"x": 1}, SECRET, algorithm="HS256")
    assert token


async def test_bad_lifecycle_messages_are_dead_lettered_with_the_reason_and_ringing_goes_on(
    make_push: MakePush, nats: NatsClient
) -> None:
    push = await make_push(tenants=2)
    tenant, other = push.tenants
    letters = await dead_letters(nats, tenant)
    js = nats.jetstream()
    await js.publish(subjects.call_lifecycle(tenant, "c1"), b"{not json")
    forged = CallRequested(tenant=other, call_id=new_call_id(), source="test", user_id="u")
    await js.publish(
        subjects.call_lifecycle(tenant, forged.call_id), forged.model_dump_json().encode()
    )
    broken = {**json.loads(forged.model_dump_json()), "tenant": tenant, "ring_timeout_s": -1}
    await js.publish(subjects.call_lifecycle(tenant, "c3"), json.dumps(broken).encode())
    await wait_until(lambda: len(letters) == 3, 10, what="three dead letters")
    reasons = sorted(letter.reason for letter in letters)
    assert any("tenant mismatch" in r for r in reasons)
    assert any("ring_timeout_s" in r for r in reasons)
    assert all(letter.consumer == f"push-calls-{tenant}" for letter in letters)

    await push.phone("ok")
    call = await _request(nats, tenant, "ok")
    await wait_until(lambda: push.of_type("call.ringing", call.call_id), 10)
