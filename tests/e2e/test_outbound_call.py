"""The seed's call, end to end, as its users meet it, on the whole mesh in separate processes.

A tenant backend requests a call → push sends a VoIP push to the APNs simulator → the
simulated phone answers over WebRTC through the gateway → the agent greets → the caller
(eSpeak speech) books "tomorrow at three p m" through the real calendar → the appointment
row, the confirmation text in the sms outbox, the transcript with both sides and a verified
audit chain → hang-up → ``CallEnded``. And the call is one trace: spans from push, gateway,
agent, calendar, sms and transcript/audit under the trace id the request started.
"""

from __future__ import annotations

import secrets
from datetime import time
from importlib import resources
from typing import Any

import httpx
import pytest
import yaml

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import (
    CallRequested,
    EndReason,
    Speaker,
    event_types,
    new_call_id,
)
from voicemesh.phone import SimulatedPhone
from voicemesh.phone.script import CallWatcher, Line, converse
from voicemesh.testkit.fixtures import LocalDays, OtlpReceiver, wait_until
from voicemesh.testkit.mesh import EventTypesSeen, nats_client, publish_event

from .conftest import Mesh, appointments_tomorrow_at

pytestmark = pytest.mark.slow

TENANT = "demo-salon"
BUNDLE_ID = "dev.voicemesh.phone"  # the demo app's bundle the stack's APNs keys are for
REQUESTED_PHONE = "+15550100199"  # on the CallRequested: the call's verified number
SPOKEN_PHONE = "+15552345678"  # "five five five two three four five six seven eight"


DIGITS = {
    w: str(n) for n, w in enumerate("zero one two three four five six seven eight nine".split())
}


def _same_digits(a: str, b: str) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def demo_script(vertical: str) -> list[Line]:
    """The vertical profile's own demo script: what a caller says and what the agent answers."""
    text = resources.files("voicemesh.agent").joinpath(f"profiles/{vertical}.yaml").read_text()
    profile: dict[str, Any] = yaml.safe_load(text)
    return [
        Line(str(step["say"]), str(step.get("expect") or "")) for step in profile["demo_script"]
    ]


async def test_requested_call_rings_answers_books_texts_records_and_is_one_trace(
    mesh: Mesh, otlp_receiver: OtlpReceiver
) -> None:
    auth = mesh.auth(TENANT)
    script = demo_script("salon")
    assert "tomorrow at three p m" in script[0].say
    days = LocalDays()
    async with httpx.AsyncClient(timeout=10) as http:
        phone = SimulatedPhone(
            token=secrets.token_hex(32),
            user_id="mary",
            tenant=TENANT,
            bundle_id=BUNDLE_ID,
            apnssim_url=mesh.url("apns-sim"),
            push_url=mesh.url("push"),
            api_key=mesh.api_keys[TENANT],
        )
        await phone.register(http)
        # Texts sent before this call (other tests share the mesh and the demo number).
        outbox = await http.get(
            f"{mesh.url('sms')}/v1/{TENANT}/messages", params={"limit": 500}, headers=auth
        )
        earlier = {m["id"] for m in outbox.json()}

        nc = await nats_client(mesh.nats_url)
        call_id = new_call_id()
        watcher = CallWatcher(nc, TENANT, call_id)
        await watcher.start()
        seen = EventTypesSeen(nc, TENANT)  # every type on the bus is in the registry
        await seen.start()
        try:
            # The tenant backend's request, with the trace context its own span would carry.
            trace_id, request_span = secrets.token_hex(16), secrets.token_hex(8)
            request = CallRequested(
                tenant=TENANT,
                call_id=call_id,
                source="tenant-backend",
                user_id="mary",
                caller_name="Bella Salon",
                phone=REQUESTED_PHONE,
            )
            await publish_event(
                nc,
                request,
                subjects.call_lifecycle(TENANT, call_id),
                headers={"traceparent": f"00-{trace_id}-{request_span}-01"},
            )
            payload = await phone.next_push(http, timeout=15)
            assert payload["call_id"] == call_id and payload["callerName"] == "Bella Salon"
            assert payload["traceparent"].split("-")[1] == trace_id
            await watcher.wait(lambda: watcher.has("call.ringing"), 10, "CallRinging")

            call = await phone.pick_up(http, payload)
            try:
                said = await converse(call, watcher, script)
                assert said >= len(script), watcher.segments
                # The script ends with goodbye: the agent hangs up.
                ended = await watcher.wait(watcher.ended, 15, "CallEnded")
            finally:
                await call.hang_up()
            assert ended.reason is EndReason.AGENT_HANGUP
            assert call.voice_frames() > 100  # the agent's voice reached the phone
            assert [e.type for e in watcher.lifecycle].count("call.ended") == 1
            for kind in ("call.ringing", "call.answered", "call.connected"):
                assert watcher.has(kind), kind
        finally:
            await watcher.stop()
            await seen.stop()
            await nc.drain()

        # The appointment, at 3 pm tomorrow in the salon's time zone.
        ours = await appointments_tomorrow_at(
            http, mesh.url("calendar"), TENANT, auth, days, time(15, 0)
        )
        assert len(ours) == 1, ours
        # Booked with what the agent heard (offline speech recognition through Opus may get
        # a digit or a surname wrong: that is the recogniser's accuracy, not the plumbing's).
        heard = [h.segment.text for h in watcher.lines(Speaker.CALLER)]
        numbers = [
            "+1" + "".join(DIGITS[w] for w in line.split())
            for line in heard
            if line and all(w in DIGITS for w in line.split())
        ]
        assert ours[0]["status"] == "booked" and ours[0]["phone"] == numbers[-1], heard
        assert _same_digits(numbers[-1], SPOKEN_PHONE) >= 10, heard
        assert ours[0]["name"].lower().startswith("mary"), heard

        # The confirmation text in the outbox (the sms worker sends it asynchronously), to
        # the number the backend verified, whatever number the caller spoke.
        async def confirmation() -> list[dict[str, Any]]:
            response = await http.get(
                f"{mesh.url('sms')}/v1/{TENANT}/messages",
                params={"to": REQUESTED_PHONE},
                headers=auth,
            )
            return [
                m
                for m in response.json()
                if m["purpose"] == "confirmation" and m["id"] not in earlier
            ]

        [text] = await wait_until(confirmation, 15, what="the confirmation text")
        assert "booked" in text["body"] and "Maria" in text["body"]

        # The transcript service has both sides.
        async def transcript() -> dict[str, Any] | None:
            response = await http.get(
                f"{mesh.url('transcript')}/v1/{TENANT}/calls/{call_id}/transcript", headers=auth
            )
            if response.status_code != 200:
                return None
            body: dict[str, Any] = response.json()
            speakers = {s["speaker"] for s in body["segments"]}
            return body if speakers == {"agent", "caller"} else None

        stored = await wait_until(transcript, 15, what="the stored transcript")
        agent_lines = [s for s in stored["segments"] if s["speaker"] == Speaker.AGENT]
        assert len(agent_lines) == len(watcher.lines(Speaker.AGENT))

        # The audit chain holds the call and verifies.
        async def audited() -> bool:
            response = await http.get(
                f"{mesh.url('audit')}/v1/{TENANT}/calls/{call_id}/audit", headers=auth
            )
            types = {r["type"] for r in response.json()["records"]}
            return {"call.connected", "call.ended", "tool.event"} <= types

        try:
            await wait_until(audited, 20, what="the call's audit records")
        except TimeoutError:
            pytest.fail("the audit service did not record the call:\n" + mesh.log_tail(40, "audit"))
    await mesh.verify_audit_chain()
    assert {"call.requested", "call.ringing", "call.ended", "tool.event"} <= set(seen.types)
    unregistered = {t: s for t, s in seen.types.items() if t not in event_types()}
    assert unregistered == {}, "published but not in contracts.events.AnyEvent (make docs)"

    # One trace: every service that worked on the call exported spans under its trace id.
    def services_in_trace() -> set[str]:
        return {s.service for s in otlp_receiver.snapshot() if s.trace_id == trace_id}

    needed = {"push", "gateway", "agent", "calendar", "sms"}
    await wait_until(
        lambda: needed <= services_in_trace() and {"transcript", "audit"} & services_in_trace(),
        15,
        what=f"spans of {sorted(needed)} and transcript/audit in trace {trace_id}",
    )
    spans = [s for s in otlp_receiver.snapshot() if s.trace_id == trace_id]
    # Not merely the same id: the booking's span descends, parent by parent, from the
    # tenant backend's request through the agent, the gateway and push.
    by_id = {s.span_id: s for s in spans}
    [booking] = [s for s in spans if s.service == "calendar" and "book" in s.name]
    path = [booking]
    while path[-1].parent_span_id in by_id:
        path.append(by_id[path[-1].parent_span_id])
    assert path[-1].parent_span_id == request_span, [(s.service, s.name) for s in path]
    hops = [s.service for s in reversed(path)]
    assert hops[0] == "push" and "gateway" in hops and "agent" in hops, hops
    print("\nthe booking's ancestry:", " -> ".join(f"{s.service}:{s.name}" for s in path[::-1]))
    by_service = {svc: sum(1 for s in spans if s.service == svc) for svc in services_in_trace()}
    print(f"\ntrace {trace_id}: {len(spans)} spans; per service {by_service}")
