"""20 concurrent calls while crm, calendar, sms, transcript and audit are SIGKILLed in turn.

The load is driven at the events level, the way the gateway and the agent would drive it:
lifecycle events and transcript segments on JetStream, and tool calls (crm lookups, calendar
bookings, SMS sends) over NATS request/reply with ``ToolClient``. Each business service runs
as its own process on a real nats-server, Redis and SQLite; while the calls are up each one
is killed with SIGKILL and started again.

Afterwards every record is counted against what was accepted: audit rows, transcript
segments, texts in the outbox, crm interactions and calendar appointments. An event is
accepted when JetStream acknowledged its publication, or when a tool service answered the
call (a call that timed out while its service was dead was not accepted; idempotent tools
are retried with the same key, as an agent would). Audit is also compared with everything
JetStream holds on the streams it records. Lost and duplicated must both be 0; the
``ToolEvent`` a tool service publishes after answering is checked for duplicates only (a
kill between the answer and the record loses the record by design, not the call).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import (
    CallConnected,
    CallEnded,
    CallRequested,
    EndReason,
    Envelope,
    Speaker,
    ToolErrorCode,
    ToolResult,
)
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.runtime.tools import ToolClient
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.events import transcript_segment
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess, wait_until
from voicemesh.testkit.mesh import publish_event

TENANT = "demo-salon"
API_KEY = "chaos-salon-api-key-0123456789"
CALLS = 20
SERVICES = ("crm", "calendar", "sms", "transcript", "audit")
#: Redelivery after a crash waits for the consumer's ack_wait (30 s in production). The
#: test provisions its consumers with a shorter one, as an operator may, so a killed
#: consumer's in-flight message comes back within the test's time budget.
ACK_WAIT_S = 4.0
#: Retrying an idempotent tool (same key) stops after this long.
RETRY_FOR_S = 40.0
TURN_GAP_S = 0.6
MIN_TURNS = 6
STAGGER_S = 0.35
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TOOL_EVENTS = "tool events (per answered request)"
# Tool answers that mean "the service did not handle it": not an accepted event.
NOT_HANDLED = {ToolErrorCode.TIMEOUT, ToolErrorCode.UNAVAILABLE}


@dataclass
class Accepted:
    """What the mesh acknowledged during the load, to count the records against."""

    lifecycle: list[Envelope] = field(default_factory=list)
    segments: dict[str, list[str]] = field(default_factory=dict)
    replies: list[ToolResult] = field(default_factory=list)
    unanswered: Counter[str] = field(default_factory=Counter)
    bookings: dict[str, str] = field(default_factory=dict)  # call id -> appointment id
    texts: dict[str, str] = field(default_factory=dict)  # call id -> idempotency key
    phones: dict[str, str] = field(default_factory=dict)  # call id -> caller phone
    publishes: int = 0


@dataclass
class Mesh:
    """The five business services as processes, each restartable on the same port and data."""

    processes: ProcessTracker
    env: dict[str, str]
    data_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    running: dict[str, ServiceProcess] = field(default_factory=dict)
    kills: list[dict[str, Any]] = field(default_factory=list)

    def start(self, name: str) -> ServiceProcess:
        port = self.ports.setdefault(name, free_port())
        env = {
            **self.env,
            "VOICEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{self.data_dir / name}.db",
            "VOICEMESH_HTTP_PORT": str(port),
        }
        process = self.processes.python_module(f"voicemesh.{name}", env, http_port=port)
        self.running[name] = process
        return process

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    async def crash_and_restart(self, name: str) -> None:
        victim = self.running[name]
        killed_at = time.monotonic()
        victim.kill()
        restarted = self.start(name)
        await restarted.wait_healthy(timeout=60)
        self.kills.append(
            {"service": name, "signal": "SIGKILL", "down_s": round(time.monotonic() - killed_at, 2)}
        )

    def crashed(self) -> list[str]:
        """Services that died without being killed by the test."""
        return [n for n, p in self.running.items() if not p.alive()]


async def _provision(js: JetStreamContext) -> list[tuple[str, str]]:
    """Streams, plus the five services' consumers with the short ack wait."""
    await streams.apply(js, services=set())
    durables = []
    for spec in streams.CONSUMERS:
        if spec.service not in SERVICES:
            continue
        quick = dataclasses.replace(spec, ack_wait_s=ACK_WAIT_S)
        await js.add_consumer(spec.stream, quick.config("*"))
        durables.append((spec.stream, spec.durable("*")))
    return durables


async def _publish(js: JetStreamContext, event: Envelope, subject: str, ledger: Accepted) -> None:
    """Publish like ``JetStreamPublisher``: JetStream, deduplicated by its message id."""
    for attempt in range(20):
        try:
            await publish_event(js, event, subject, timeout=5)
        except Exception:
            # Not acknowledged, so not accepted: publish again with the same id.
            await asyncio.sleep(0.1 * (attempt + 1))
            continue
        ledger.publishes += 1
        return
    raise AssertionError(f"JetStream never acknowledged {type(event).__name__}")


async def _tool(
    client: ToolClient,
    ledger: Accepted,
    service: str,
    name: str,
    arguments: dict[str, Any],
    *,
    call_id: str | None,
    idempotency_key: str | None = None,
    retry: bool = False,
) -> ToolResult:
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        result = await client.call(
            TENANT, service, name, arguments, call_id=call_id, idempotency_key=idempotency_key
        )
        handled = result.error is None or result.error.code not in NOT_HANDLED
        if handled:
            assert result.source == service, result
            ledger.replies.append(result)
            return result
        ledger.unanswered[f"{service}.{name}"] += 1
        if not retry or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.3)


async def _simulated_call(
    i: int,
    js: JetStreamContext,
    client: ToolClient,
    ledger: Accepted,
    slot: str,
    faults_done: asyncio.Event,
    run: str,
) -> None:
    call_id = f"chaos-{run}-{i:02d}"
    phone = f"+1555020{i:04d}"
    ledger.phones[call_id] = phone
    ledger.segments[call_id] = []
    lifecycle = subjects.call_lifecycle(TENANT, call_id)

    async def lifecycle_event(event: Envelope) -> None:
        await _publish(js, event, lifecycle, ledger)
        ledger.lifecycle.append(event)

    async def segment(speaker: Speaker, text: str) -> None:
        n = sum(1 for s in ledger.segments[call_id] if f":{speaker.value}:" in s)
        seg = transcript_segment(TENANT, call_id, speaker, n, text, start_s=n, end_s=n + 0.5)
        await _publish(js, seg, subjects.call_transcript(TENANT, call_id), ledger)
        ledger.segments[call_id].append(seg.segment_id)

    # Staggered starts spread bookings and texts over the whole fault window.
    await asyncio.sleep(i * STAGGER_S)
    started = time.monotonic()
    await lifecycle_event(
        CallRequested(
            tenant=TENANT, call_id=call_id, source="chaos", user_id=f"user-{i}", phone=phone
        )
    )
    await asyncio.sleep(random.uniform(0.1, 0.5))
    await lifecycle_event(
        CallConnected(tenant=TENANT, call_id=call_id, source="gateway", vertical="salon")
    )
    turn = 0
    while turn < MIN_TURNS or not faults_done.is_set():
        await segment(Speaker.AGENT, f"agent line {turn}")
        await asyncio.sleep(TURN_GAP_S / 2)
        await segment(Speaker.CALLER, f"caller line {turn}")
        if turn == 1:
            booked = await _tool(
                client,
                ledger,
                "calendar",
                "book",
                {"start": slot, "name": f"Caller {i}", "phone": phone},
                call_id=call_id,
                idempotency_key=f"{call_id}-book",
                retry=True,
            )
            assert booked.ok and booked.result, booked.error
            ledger.bookings[call_id] = booked.result["appointment"]["appointment_id"]
        elif turn == 2:
            key = f"{call_id}-confirm"
            sent = await _tool(
                client,
                ledger,
                "sms",
                "send",
                {"to": phone, "body": f"Booked for {slot}", "purpose": "confirmation"},
                # Sent as the tenant's backend sends it: on a call, only the call's verified
                # number can be texted, and only from a template (prompt-injection guard).
                call_id=None,
                idempotency_key=key,
                retry=True,
            )
            assert sent.ok and sent.result and sent.result["queued"], sent.error
            ledger.texts[call_id] = key
        else:
            await _tool(client, ledger, "crm", "lookup_contact", {"phone": phone}, call_id=call_id)
        await asyncio.sleep(TURN_GAP_S / 2)
        turn += 1
    await lifecycle_event(
        CallEnded(
            tenant=TENANT,
            call_id=call_id,
            source="gateway",
            reason=EndReason.HANGUP,
            duration_s=round(time.monotonic() - started, 3),
        )
    )


async def _faults(mesh: Mesh, faults_done: asyncio.Event, load_started: asyncio.Event) -> None:
    await load_started.wait()
    try:
        for name in SERVICES:
            await asyncio.sleep(0.8)  # calls keep going between faults
            await mesh.crash_and_restart(name)
    finally:
        faults_done.set()


# --- counting ------------------------------------------------------------------------------


@dataclass
class Count:
    expected: int
    recorded: int
    lost: int
    duplicated: int

    @classmethod
    def of(cls, expected: list[str], recorded: list[str]) -> Count:
        seen = Counter(recorded)
        return cls(
            expected=len(expected),
            recorded=sum(seen[k] for k in set(expected)),
            lost=sum(1 for k in set(expected) if seen[k] == 0),
            duplicated=sum(seen[k] - 1 for k in set(expected) if seen[k] > 1),
        )


async def _audit_records(http: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (
            await http.get(
                f"{url}/v1/{TENANT}/audit", params={"after_seq": after, "limit": 1000}, headers=AUTH
            )
        ).json()
        records += page["records"]
        if page["next_after_seq"] is None:
            return records
        after = page["next_after_seq"]


#: The streams audit records, and this tenant's part of each.
AUDITED = (
    ("CALLS", subjects.call_lifecycle(TENANT, "*")),
    ("EVENTS", subjects.event(TENANT, "*")),
    ("SMS", subjects.sms_outbound(TENANT)),
)


async def _stream_events(js: JetStreamContext) -> list[dict[str, Any]]:
    """Every event JetStream accepted on the audited streams: what audit must hold."""
    found: list[dict[str, Any]] = []
    for stream, subject in AUDITED:
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
        )
        try:
            while True:
                try:
                    batch = await sub.fetch(1000, timeout=0.5)
                except TimeoutError:
                    break
                found += [json.loads(m.data) for m in batch]
        finally:
            await sub.unsubscribe()
    return found


async def _count_records(
    js: JetStreamContext, mesh: Mesh, ledger: Accepted, day: date
) -> dict[str, Count]:
    published = await _stream_events(js)
    async with httpx.AsyncClient(timeout=10) as http:
        audit = await _audit_records(http, mesh.url("audit"))
        by_type: dict[str, list[dict[str, Any]]] = {}
        for record in audit:
            by_type.setdefault(record["type"], []).append(record["event"])

        segments: list[str] = []
        for call_id in ledger.segments:
            response = await http.get(
                f"{mesh.url('transcript')}/v1/{TENANT}/calls/{call_id}/transcript", headers=AUTH
            )
            if response.status_code == 200:
                segments += [s["segment_id"] for s in response.json()["segments"]]

        messages = (
            await http.get(
                f"{mesh.url('sms')}/v1/{TENANT}/messages", params={"limit": 500}, headers=AUTH
            )
        ).json()
        sent = [m["idempotency_key"] for m in messages if m["status"] == "sent"]

        appointments = (
            await http.get(
                f"{mesh.url('calendar')}/v1/{TENANT}/appointments",
                params={"day": day.isoformat(), "days": 1},
                headers=AUTH,
            )
        ).json()["appointments"]

        interactions: list[str] = []
        for call_id, phone in ledger.phones.items():
            found = (
                await http.get(
                    f"{mesh.url('crm')}/v1/{TENANT}/contacts", params={"q": phone}, headers=AUTH
                )
            ).json()["contacts"]
            for contact in found:
                history = (
                    await http.get(
                        f"{mesh.url('crm')}/v1/{TENANT}/contacts/{contact['contact_id']}"
                        "/interactions",
                        headers=AUTH,
                    )
                ).json()["interactions"]
                interactions += [f"{call_id}:{h['kind']}" for h in history]

    appointment_changes = by_type.get("appointment.changed", [])
    sms_status = by_type.get("sms.status", [])
    return {
        # Everything JetStream accepted on CALLS, EVENTS and SMS is an audit row, once.
        "audit rows vs JetStream": Count.of(
            [e["event_id"] for e in published], [r["event_id"] for r in audit]
        ),
        # No tool call is recorded twice (a retry is a new request with its own id). Not
        # counted as lost when missing: ToolServer records a call after answering it, so a
        # kill between the two loses the record by design (the answer was not lost).
        TOOL_EVENTS: Count.of(
            [r.request_id for r in ledger.replies],
            [e["request_id"] for e in published if e.get("type") == "tool.event"],
        ),
        "audit: call lifecycle": Count.of(
            [e.event_id for e in ledger.lifecycle],
            [r["event_id"] for r in audit if r["type"].startswith("call.")],
        ),
        "audit: sms jobs": Count.of(
            [derived_id(TENANT, k) for k in ledger.texts.values()],
            [e["event_id"] for e in by_type.get("sms.job", [])],
        ),
        "audit: appointment events": Count.of(
            list(ledger.bookings.values()),
            [e["appointment_id"] for e in appointment_changes if e["change"] == "booked"],
        ),
        "audit: sms status events": Count.of(
            list(ledger.texts.values()),
            [e["idempotency_key"] for e in sms_status if e["status"] == "sent"],
        ),
        "transcript segments": Count.of(
            [s for segs in ledger.segments.values() for s in segs], segments
        ),
        "sms outbox (sent)": Count.of(list(ledger.texts.values()), sent),
        "calendar appointments": Count.of(
            list(ledger.bookings.values()),
            [a["appointment_id"] for a in appointments if a["status"] == "booked"],
        ),
        # One call, one booking and one text per caller: three history rows each.
        "crm interactions": Count.of(
            [f"{c}:{kind}" for c in ledger.phones for kind in ("call", "appointment", "sms")],
            interactions,
        ),
    }


async def _settled(js: JetStreamContext, durables: list[tuple[str, str]]) -> bool:
    for stream, durable in durables:
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            return False
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def test_sigkill_each_business_service_under_load(
    nats: NatsClient,
    nats_url: str,
    redis_url: str,
    processes: ProcessTracker,
    tmp_path: Path,
    unique: Callable[[str], str],
    chaos_results: Callable[[dict[str, Any]], None],
) -> None:
    js = nats.jetstream()
    durables = await _provision(js)
    env = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_API_KEYS": f"{TENANT}:{API_KEY}",
        "VOICEMESH_TENANTS": f"{TENANT}:salon",
        "VOICEMESH_REMINDER_POLL_S": "0",  # reminder texts would blur the SMS count
        "VOICEMESH_RATE_LIMIT": "10000",
        "VOICEMESH_SEED_DEMO_DATA": "false",
        "VOICEMESH_GRACEFUL_TIMEOUT": "3",
    }
    mesh = Mesh(processes, env, tmp_path)
    for name in SERVICES:
        mesh.start(name)
    for name in SERVICES:
        await mesh.running[name].wait_healthy(timeout=60)

    client = ToolClient(nats, source="agent")
    day = datetime.now(UTC).date() + timedelta(days=3)
    free = await client.call(TENANT, "calendar", "availability", {"day": day.isoformat()})
    assert free.ok and free.result, free.error
    slots = [s["start"] for s in free.result["slots"]]
    assert len(slots) >= CALLS, "the default hours give more slots than calls"

    ledger = Accepted()
    run = unique("r").split("-", 1)[1].replace("-", "")
    faults_done, load_started = asyncio.Event(), asyncio.Event()
    started = time.monotonic()
    calls = [
        asyncio.create_task(
            _simulated_call(i, js, client, ledger, slots[i], faults_done, run), name=f"call {i}"
        )
        for i in range(CALLS)
    ]
    load_started.set()
    injector = asyncio.create_task(_faults(mesh, faults_done, load_started))
    try:
        await asyncio.gather(*calls, injector)
    finally:
        for task in [*calls, injector]:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*calls, injector, return_exceptions=True)
    load_s = time.monotonic() - started
    assert [k["service"] for k in mesh.kills] == list(SERVICES)

    # Everything the mesh accepted is eventually recorded: wait for the counts to converge.
    counts: dict[str, Count] = {}

    async def converged() -> bool:
        nonlocal counts
        if not await _settled(js, durables):
            return False
        counts = await _count_records(js, mesh, ledger, day)
        return all(c.lost == 0 for k, c in counts.items() if k != TOOL_EVENTS)

    try:
        await wait_until(converged, timeout=45, interval=0.5, what="every record")
    finally:
        if not counts:
            counts = await _count_records(js, mesh, ledger, day)
        crashed = mesh.crashed()
        chaos_results(
            {
                "title": "SIGKILL crm, calendar, sms, transcript, audit under load",
                "calls": CALLS,
                "events_published": ledger.publishes + len(ledger.replies),
                "jetstream_events_published": ledger.publishes,
                "faults": [f"{k['service']} SIGKILL" for k in mesh.kills],
                "expected": sum(c.expected for k, c in counts.items() if k != TOOL_EVENTS),
                "recorded": sum(c.recorded for k, c in counts.items() if k != TOOL_EVENTS),
                "lost": sum(c.lost for k, c in counts.items() if k != TOOL_EVENTS),
                "duplicated": sum(c.duplicated for c in counts.values()),
                "tool_replies_without_event": counts[TOOL_EVENTS].lost if counts else None,
                "tool_calls_answered": len(ledger.replies),
                "tool_calls_unanswered": sum(ledger.unanswered.values()),
                "load_s": round(load_s, 1),
                "kills": mesh.kills,
                "records": {k: dataclasses.asdict(v) for k, v in counts.items()},
                "crashes": len(crashed),
            },
        )
    for kind, count in counts.items():
        assert count.duplicated == 0, f"{kind}: {count}"
        if kind != TOOL_EVENTS:
            assert count.lost == 0, f"{kind}: {count}"
            assert count.recorded == count.expected, f"{kind}: {count}"
    assert counts["transcript segments"].expected >= CALLS * MIN_TURNS * 2
    assert not crashed, "a service died without being killed"
    async with httpx.AsyncClient(timeout=10) as http:
        verify = (
            await http.get(f"{mesh.url('audit')}/v1/{TENANT}/audit/verify", headers=AUTH)
        ).json()
    assert verify["ok"], verify
