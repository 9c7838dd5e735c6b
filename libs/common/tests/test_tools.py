"""The tool protocol against a real nats-server: typed results, typed errors, never silence."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from pydantic import Field

from voicemesh.common import MeshService, NotFound, ServiceSettings, setup_telemetry
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import (
    AppointmentChanged,
    ToolErrorCode,
    ToolEvent,
    ToolRequest,
    ToolResult,
)
from voicemesh.common.contracts.tenancy import Vertical
from voicemesh.common.contracts.tools import (
    ToolArgs,
    ToolCallError,
    ToolFailure,
    ToolOutput,
    ToolSpec,
)
from voicemesh.common.runtime.tools import ToolCall, ToolClient, ToolServer
from voicemesh.testkit.fixtures import wait_until


class EchoArgs(ToolArgs):
    text: str = Field(min_length=1, max_length=20)
    delay_s: float = 0.0
    fail: str | None = None


class EchoResult(ToolOutput):
    text: str
    tenant: str
    call_id: str | None


ECHO = ToolSpec("echo", "echo", EchoArgs, EchoResult, timeout_s=0.5)
LEGAL_ONLY = ToolSpec("echo", "legal", EchoArgs, EchoResult, verticals=frozenset({Vertical.LEGAL}))


async def echo(call: ToolCall, args: EchoArgs) -> EchoResult:
    if args.delay_s:
        await asyncio.sleep(args.delay_s)
    if args.fail == "not_found":
        raise NotFound("no such text")
    if args.fail == "slot_taken":
        raise ToolFailure(ToolErrorCode.SLOT_TAKEN, "that slot is taken")
    if args.fail == "bug":
        raise RuntimeError("secret internals")
    return EchoResult(text=args.text, tenant=call.tenant.id, call_id=call.call_id)


@dataclass
class Harness:
    tenant: str
    legal: str
    client: ToolClient
    spans: InMemorySpanExporter
    nats: NatsClient
    service: MeshService
    server: ToolServer


@pytest.fixture
async def harness(
    nats: NatsClient, nats_url: str, unique: Callable[[str], str]
) -> AsyncIterator[Harness]:
    await streams.apply(nats.jetstream(), services=set())
    tenant, legal = unique("t"), unique("l")
    settings = ServiceSettings(nats_urls=[nats_url], tenants=f"{tenant}:salon,{legal}:legal")
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry("echo", span_processors=[SimpleSpanProcessor(spans)])
    service = MeshService("echo", settings, telemetry=telemetry)
    server = ToolServer(service, max_workers=8)
    server.register(ECHO, echo)
    server.register(LEGAL_ONLY, echo)
    await service.start()
    try:
        client = ToolClient(nats, source="test", tracer=telemetry.tracer)
        yield Harness(tenant, legal, client, spans, nats, service, server)
    finally:
        await service.stop()


async def test_typed_round_trip_records_a_tool_event_and_a_span(harness: Harness) -> None:
    js = harness.nats.jetstream()
    events = await js.subscribe(subjects.event(harness.tenant, "tool"), stream="EVENTS")
    result = await harness.client.call_typed(
        harness.tenant, ECHO, EchoArgs(text="hello"), call_id="call-1"
    )
    assert result == EchoResult(text="hello", tenant=harness.tenant, call_id="call-1")

    msg = await events.next_msg(timeout=5)
    event = ToolEvent.model_validate_json(msg.data)
    assert (event.service, event.name, event.ok, event.call_id) == ("echo", "echo", True, "call-1")
    assert event.duration_ms >= 0
    names = [s.name for s in harness.spans.get_finished_spans()]
    assert "tool echo.echo" in names
    finished = harness.spans.get_finished_spans()
    server_span = next(s for s in finished if s.name == "tool echo.echo")
    client_span = next(s for s in finished if s.name == "tool.call echo.echo")
    assert server_span.attributes is not None
    assert "hello" not in str(dict(server_span.attributes))
    # One trace: the server's span is the child of the caller's, across NATS headers.
    assert server_span.parent is not None and client_span.context is not None
    assert server_span.parent.span_id == client_span.context.span_id
    metrics = generate_latest(harness.service.telemetry.registry).decode()
    assert 'voicemesh_tool_calls_total{outcome="ok",tool="echo"} 1.0' in metrics


async def test_bad_arguments_and_bad_json_get_invalid_and_the_server_keeps_serving(
    harness: Harness,
) -> None:
    result = await harness.client.call(harness.tenant, "echo", "echo", {"text": "x" * 50})
    assert not result.ok and result.error is not None
    assert result.error.code is ToolErrorCode.INVALID
    assert "text" in result.error.message and "x" * 50 not in result.error.message

    extra = await harness.client.call(harness.tenant, "echo", "echo", {"text": "a", "evil": 1})
    assert extra.error is not None and extra.error.code is ToolErrorCode.INVALID

    reply = await harness.nats.request(
        subjects.tool(harness.tenant, "echo", "echo"), b"{not json", timeout=2
    )
    garbage = ToolResult.model_validate_json(reply.data)
    assert not garbage.ok and garbage.error is not None
    assert garbage.error.code is ToolErrorCode.INVALID

    unknown = await harness.client.call(harness.tenant, "echo", "nope", {"text": "a"})
    assert unknown.error is not None and unknown.error.code is ToolErrorCode.INVALID

    ok = await harness.client.call(harness.tenant, "echo", "echo", {"text": "still"})
    assert ok.ok and ok.result == {"text": "still", "tenant": harness.tenant, "call_id": None}


async def test_errors_are_typed_and_internals_stay_hidden(harness: Harness) -> None:
    codes = {}
    for fail in ("not_found", "slot_taken", "bug"):
        result = await harness.client.call(
            harness.tenant, "echo", "echo", {"text": "a", "fail": fail}
        )
        assert result.error is not None
        codes[fail] = (result.error.code, result.error.message)
    assert codes["not_found"] == (ToolErrorCode.NOT_FOUND, "no such text")
    assert codes["slot_taken"] == (ToolErrorCode.SLOT_TAKEN, "that slot is taken")
    assert codes["bug"] == (ToolErrorCode.INTERNAL, "internal error")

    with pytest.raises(ToolCallError) as caught:
        await harness.client.call_typed(harness.tenant, ECHO, EchoArgs(text="a", fail="not_found"))
    assert caught.value.error.code is ToolErrorCode.NOT_FOUND


async def test_deadlines_give_a_timeout_result_never_silence(harness: Harness) -> None:
    # The server's own deadline (0.5 s) answers first with a typed timeout.
    slow = await harness.client.call(harness.tenant, "echo", "echo", {"text": "a", "delay_s": 2})
    assert slow.error is not None and slow.error.code is ToolErrorCode.TIMEOUT
    assert "0.5" in slow.error.message

    # A client that will not wait that long gets its own timeout result.
    impatient = await harness.client.call(
        harness.tenant, "echo", "echo", {"text": "a", "delay_s": 0.4}, timeout=0.1
    )
    assert impatient.error is not None and impatient.error.code is ToolErrorCode.TIMEOUT

    # Nobody serving the subject: unavailable, at once.
    absent = await harness.client.call(harness.tenant, "nobody", "echo", {"text": "a"})
    assert absent.error is not None and absent.error.code is ToolErrorCode.UNAVAILABLE


async def test_tenant_and_vertical_fences(harness: Harness, unique: Callable[[str], str]) -> None:
    stranger = await harness.client.call(unique("s"), "echo", "echo", {"text": "a"})
    assert stranger.error is not None and stranger.error.code is ToolErrorCode.FORBIDDEN

    salon = await harness.client.call(harness.tenant, "echo", "legal", {"text": "a"})
    assert salon.error is not None and salon.error.code is ToolErrorCode.FORBIDDEN
    legal = await harness.client.call(harness.legal, "echo", "legal", {"text": "a"})
    assert legal.ok

    # A body claiming another tenant than its subject is refused.
    forged = ToolRequest(
        tenant=harness.legal, source="test", service="echo", name="echo", arguments={"text": "a"}
    )
    reply = await harness.nats.request(
        subjects.tool(harness.tenant, "echo", "echo"), forged.model_dump_json().encode(), timeout=2
    )
    answer = ToolResult.model_validate_json(reply.data)
    assert answer.error is not None and answer.error.code is ToolErrorCode.FORBIDDEN


async def test_concurrent_calls_run_in_parallel(harness: Harness) -> None:
    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(
        *(
            harness.client.call(harness.tenant, "echo", "echo", {"text": f"n{i}", "delay_s": 0.2})
            for i in range(8)
        )
    )
    elapsed = asyncio.get_running_loop().time() - started
    assert all(r.ok for r in results)
    assert elapsed < 1.2, f"8 calls of 0.2 s took {elapsed:.2f}s: not concurrent"


async def test_stopping_answers_the_calls_in_flight(harness: Harness) -> None:
    call = asyncio.create_task(
        harness.client.call(harness.tenant, "echo", "echo", {"text": "late", "delay_s": 0.3})
    )
    await wait_until(lambda: harness.server.in_flight == 1, 5, what="the call in the handler")
    await harness.service.stop()
    result = await call
    assert result.ok, result.error
    after = await harness.client.call(harness.tenant, "echo", "echo", {"text": "x"}, timeout=1)
    assert after.error is not None and after.error.code is ToolErrorCode.UNAVAILABLE


async def test_handler_events_reach_jetstream_and_a_refusal_is_logged(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    js = harness.nats.jetstream()
    stored = await js.subscribe(subjects.event(harness.tenant, "appointment"), stream="EVENTS")
    event = AppointmentChanged(
        tenant=harness.tenant,
        source="echo",
        appointment_id="a1",
        change="booked",
        start=datetime(2030, 1, 1, 9, tzinfo=UTC),
    )
    await harness.server.publish_event(event, subjects.event(harness.tenant, "appointment"))
    await harness.server.publish_event(event, subjects.event(harness.tenant, "appointment"))
    got = AppointmentChanged.model_validate_json((await stored.next_msg(timeout=5)).data)
    assert got.event_id == event.event_id
    with pytest.raises(nats_errors.TimeoutError):
        await stored.next_msg(timeout=0.5)  # the same event id twice is stored once
    await stored.unsubscribe()

    # No stream takes core-NATS control subjects: JetStream's refusal is logged, not lost.
    with caplog.at_level(logging.WARNING, logger="voicemesh.common.contracts.tools"):
        await harness.server.publish_event(event, subjects.call_control(harness.tenant, "c1"))
        await wait_until(
            lambda: "JetStream refused the appointment.changed event" in caplog.text,
            timeout=5,
            what="the refusal in the log",
        )
