"""Hostile payloads on every subscribed subject: no crash, each one refused with a reason.

Every service runs as its own process against a real JetStream (``secure_mesh``).
Hypothesis generates the payloads (garbage bytes, wrong JSON shapes, envelopes with invalid
fields, events claiming another tenant):

* on each JetStream subject family with a durable reader, every payload lands in the
  tenant's dead-letter subject with its reason, once per reader that judged it: every
  validating reader judges all of them; the readers that act on a few event types (push,
  crm's event history) judge what is no event at all and ack other types unread;
* on every tool subject (request/reply), every malformed request gets a typed ``invalid``
  reply at once (a request claiming another tenant: ``forbidden``), never silence;
* on a live call's core-NATS subjects, garbage ``audio.in``/``audio.out`` frames and
  transcript segments are skipped by the agent and the gateway, and garbage ``control``
  messages are dead-lettered by the gateway; the call goes on.

Every service is still alive and healthy afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from voicemesh.common import DeadLetter, InvalidMessage, decode_event
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.audio import AudioFrame, encode_frame
from voicemesh.common.contracts.events import ToolRequest, ToolResult
from voicemesh.common.contracts.tools import TOOLS, ToolSpec
from voicemesh.testkit.fixtures import dead_letters, wait_until
from voicemesh.testkit.whip import WhipCaller

from .conftest import TENANTS, VERTICALS, SecureMesh, record_security

pytestmark = pytest.mark.slow

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _draw(strategy: st.SearchStrategy[bytes], count: int, keep: Any) -> list[bytes]:
    """``count`` distinct values of ``strategy`` that ``keep`` accepts, drawn by hypothesis."""
    found: list[bytes] = []

    @settings(max_examples=count * 4, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def collect(value: bytes) -> None:
        if len(found) < count and value not in found and value.strip() and keep(value):
            found.append(value)

    collect()
    return found


def hostile_payloads(tenant: str, count: int) -> list[bytes]:
    """``count`` distinct hostile payloads, none a valid event of ``tenant``."""
    envelope_types = ["call.connected", "call.ended", "call.requested", "transcript.segment",
                      "sms.job", "push.job", "tool.event", "no.such.type"]  # fmt: skip

    def envelope(kind: str, extra: dict[str, Any], claimed: str) -> bytes:
        body = {"type": kind, "tenant": claimed, "call_id": "c-1", "source": "fuzz", **extra}
        return json.dumps(body).encode()

    payload = st.one_of(
        st.binary(min_size=1, max_size=256),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.builds(
            envelope,
            st.sampled_from(envelope_types),
            st.dictionaries(st.sampled_from(["reason", "speaker", "to", "text", "user_id",
                                             "start_s", "event_id", "schema_version"]),
                            json_values, max_size=3),
            st.sampled_from([tenant, "someone-else", "", "UPPER"]),
        ),
    )  # fmt: skip
    return _draw(payload, count, lambda value: _hostile(value, tenant))


def _hostile(value: bytes, tenant: str) -> bool:
    """True unless ``value`` is a valid event of ``tenant`` (which a service would accept)."""
    try:
        event = decode_event(value)
    except InvalidMessage:
        return True
    return event.tenant != tenant


def malformed_tool_requests(spec: ToolSpec[Any, Any], tenant: str, count: int) -> list[bytes]:
    """Requests for ``spec`` that are not a ``ToolRequest`` or whose arguments its model
    refuses: garbage, wrong shapes, and well-formed envelopes with bad arguments."""

    def request(arguments: dict[str, Any]) -> bytes:
        body = ToolRequest(tenant=tenant, source="fuzz", service=spec.service, name=spec.name,
                           arguments=arguments)  # fmt: skip
        return body.model_dump_json().encode()

    fields = [*sorted(spec.arguments.model_fields), "unexpected"]
    arguments = st.dictionaries(st.sampled_from(fields), json_values, max_size=4)
    strategy = st.one_of(
        st.binary(min_size=1, max_size=128),
        json_values.map(lambda v: json.dumps(v).encode()),
        arguments.map(request),
    )

    def malformed(value: bytes) -> bool:
        try:
            parsed = ToolRequest.model_validate_json(value)
            spec.arguments.model_validate(parsed.arguments)
        except ValidationError:
            return True
        return False

    return _draw(strategy, count, malformed)


# Durable readers of each subject family. The PUSH stream's ``push-jobs`` consumer is
# provisioned but no service reads it (push rings from lifecycle events), so nothing is
# subscribed there to be fuzzed.
UNREAD = {("push", "jobs")}
FAMILIES = ("lifecycle", "transcript", "events", "sms")
# Readers that act on a few event types and ack the others unread by design (push rings on
# four lifecycle types; crm keeps appointment and SMS history). They dead-letter what is not
# an event at all and what they handle but cannot validate; the rest is judged by the
# validating readers of the same stream (audit reads every stream).
FILTERING = ("push-calls", "crm-events")


def _is_typed_object(body: bytes) -> bool:
    try:
        value = json.loads(body)
    except ValueError:
        return False
    return isinstance(value, dict) and isinstance(value.get("type"), str)


def _subject(family: str, tenant: str) -> str:
    builders = {
        "lifecycle": lambda: subjects.call_lifecycle(tenant, "c-1"),
        "transcript": lambda: subjects.call_transcript(tenant, "c-1"),
        "events": lambda: subjects.event(tenant, "tool"),
        "sms": lambda: subjects.sms_outbound(tenant),
    }
    return builders[family]()


async def test_hostile_payloads_are_dead_lettered_and_nothing_crashes(
    secure_mesh: SecureMesh, mesh_nats: NatsClient
) -> None:
    js = mesh_nats.jetstream()
    tenant = TENANTS["fuzz"]
    entries = await dead_letters(mesh_nats, tenant)
    payloads = hostile_payloads(tenant, 12)
    untyped = sum(not _is_typed_object(p) for p in payloads)
    readers = [
        spec
        for spec in streams.CONSUMERS
        if (spec.service, spec.purpose) not in UNREAD and spec.filter in FAMILIES
    ]
    # At least this many dead letters per (subject, reader): all payloads for a validating
    # reader, the ones that are no typed JSON object for a filtering one.
    floor: dict[tuple[str, str], int] = {}
    for spec in readers:
        name = f"{spec.service}-{spec.purpose}"
        floor[(_subject(spec.filter, tenant), name)] = (
            untyped if name in FILTERING else len(payloads)
        )
    for family in FAMILIES:
        for index, body in enumerate(payloads):
            await js.publish(
                _subject(family, tenant), body, headers={"Nats-Msg-Id": f"{family}-{index}"}
            )

    def per_reader() -> Counter[tuple[str, str]]:
        # push's lane consumer is per tenant: push-calls-<tenant>.
        return Counter((e.subject, e.consumer.removesuffix(f"-{tenant}")) for e in entries)

    def all_dead_lettered() -> bool:
        got = per_reader()
        return all(got[key] >= count for key, count in floor.items())

    try:
        await wait_until(all_dead_lettered, timeout=60, what="every payload dead-lettered")
    except TimeoutError:
        raise AssertionError(f"dead letters expected {floor}, got {dict(per_reader())}") from None
    # Every hostile message is in the dead-letter subject with its reason, on every family.
    for family in FAMILIES:
        subject = _subject(family, tenant)
        judged = {e.payload for e in entries if e.subject == subject}
        assert judged == {p.decode("utf-8", errors="replace") for p in payloads}, family
    assert all(entry.reason and entry.error_type for entry in entries)
    # No reader dead-lettered a payload twice (no redelivery loop on a poisoned message).
    assert len({(e.subject, e.consumer, e.payload) for e in entries}) == len(entries)
    await _all_healthy(secure_mesh)
    record_security(
        "jetstream_payloads",
        {
            "hostile_inputs": len(payloads) * len(FAMILIES),
            "readers": len(floor),
            "rejected": len(payloads) * len(FAMILIES),
            "dead_letters": len(entries),
            "crashes": len(secure_mesh.crashed()),
            "server_errors": 0,
        },
    )


async def test_malformed_tool_requests_get_typed_invalid_replies(
    secure_mesh: SecureMesh, mesh_nats: NatsClient
) -> None:
    tenants = {vertical: TENANTS[role] for role, vertical in VERTICALS.items()}
    codes: Counter[str] = Counter()
    wrong: list[str] = []
    tried = 0
    for spec in TOOLS.values():
        vertical = sorted(spec.verticals)[0].value if spec.verticals else "salon"
        tenant = tenants[vertical]
        subject = spec.subject(tenant)
        for body in malformed_tool_requests(spec, tenant, 8):
            tried += 1
            reply = await mesh_nats.request(subject, body, timeout=5)
            result = ToolResult.model_validate_json(reply.data)
            code = result.error.code.value if result.error else "ok"
            codes[code] += 1
            if result.ok or code != "invalid":
                wrong.append(f"{spec.service}.{spec.name} {body[:80]!r}: {code}")
        # Another tenant's envelope on this tenant's subject: forbidden, whatever it holds.
        foreign = ToolRequest(tenant=TENANTS["b"], source="fuzz", service=spec.service,
                              name=spec.name, arguments={})  # fmt: skip
        reply = await mesh_nats.request(subject, foreign.model_dump_json().encode(), timeout=5)
        tried += 1
        result = ToolResult.model_validate_json(reply.data)
        codes[result.error.code.value if result.error else "ok"] += 1
        if result.error is None or result.error.code.value != "forbidden":
            wrong.append(f"{spec.service}.{spec.name} foreign tenant: {result}")
    record_security(
        "tool_requests",
        {
            "hostile_inputs": tried,
            "rejected": tried - codes["ok"],
            "replies": dict(codes),
            "crashes": len(secure_mesh.crashed()),
            "server_errors": codes["internal"],
        },
    )
    assert not wrong, "\n".join(wrong)
    await _all_healthy(secure_mesh)


async def test_garbage_on_a_live_calls_audio_and_control_subjects(
    secure_mesh: SecureMesh, mesh_nats: NatsClient
) -> None:
    tenant = TENANTS["media"]
    garbage = hostile_payloads(tenant, 24)
    frames = [
        *garbage,
        encode_frame(AudioFrame.now(1, bytes(640)))[:-3],  # a frame cut short
        b"\x00" * 3,
    ]
    gateway = secure_mesh.url("gateway")
    agent = secure_mesh.url("agent")
    async with httpx.AsyncClient(base_url=gateway, timeout=15) as http:
        caller = WhipCaller(http)
        try:
            created = await caller.create(tenant, secure_mesh.key("media"))
            call_id = created["call_id"]
            answered = await caller.connect(created["whip_url"], created["token"])
            assert answered.status_code == 201, answered.text
            await wait_until(caller.connected, timeout=15, what="ICE connected")

            async def agent_has_call() -> bool:
                return int((await http.get(f"{agent}/v1/calls")).json()["active"]) >= 1

            await wait_until(agent_has_call, timeout=20, what="the agent's conversation")
            letters = await dead_letters(mesh_nats, tenant)
            for body in frames:
                # Both media directions: the agent drops bad caller frames, the gateway
                # counts and skips bad agent frames.
                await mesh_nats.publish(subjects.audio_in(tenant, call_id), body)
                await mesh_nats.publish(subjects.audio_out(tenant, call_id), body)
            for body in garbage:
                # The gateway's live transcript for /demo skips what is not a segment.
                await mesh_nats.publish(subjects.call_transcript(tenant, call_id), body)
                await mesh_nats.publish(subjects.call_control(tenant, call_id), body)
            await mesh_nats.flush()

            def control() -> list[DeadLetter]:
                return [e for e in letters if e.consumer == "gateway-control"]

            await wait_until(
                lambda: len(control()) >= len(garbage), timeout=20, what="control dead letters"
            )
            entries = control()
            assert all(e.reason and e.call_id == call_id for e in entries)
            # The call is still up on both sides: nothing hung it up or crashed.
            assert await caller.connected()
            assert await agent_has_call()
            assert (await caller.hangup()).status_code == 200
        finally:
            await caller.close()
    await _all_healthy(secure_mesh)
    record_security(
        "live_call_subjects",
        {
            "hostile_inputs": 2 * len(frames) + 2 * len(garbage),
            "rejected": 2 * len(frames) + len(garbage) + len(entries),
            "dead_lettered": len(entries),
            "crashes": len(secure_mesh.crashed()),
            "server_errors": 0,
        },
    )


async def _all_healthy(mesh: SecureMesh) -> None:
    assert not mesh.crashed(), mesh.crashed()
    await asyncio.gather(*(p.wait_healthy(timeout=10) for p in mesh.services.values()))
