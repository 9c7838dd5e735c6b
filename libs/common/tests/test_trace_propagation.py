"""Trace context crosses process boundaries in NATS headers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client as NatsClient

from voicemesh.common import CallConnected, ServiceSettings, setup_telemetry
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.streams import ConsumerSpec
from voicemesh.common.runtime.bus import make_broker
from voicemesh.testkit.fixtures import OtlpReceiver, ProcessTracker, wait_until

HERE = Path(__file__).parent


async def test_publisher_span_is_parent_of_consumer_span_in_another_process(
    nats: NatsClient,
    nats_url: str,
    processes: ProcessTracker,
    otlp_receiver: OtlpReceiver,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    js = nats.jetstream()
    await streams.apply(js, services=set())
    tenant, purpose = unique("t"), unique("p")
    await js.add_consumer(
        "CALLS", ConsumerSpec("probe", purpose, "CALLS", "lifecycle").config(tenant)
    )
    record = tmp_path / "record.txt"
    probe = processes.python_module(
        "probe_service",
        {
            "PYTHONPATH": str(HERE),
            "VOICEMESH_NATS_URL": nats_url,
            "VOICEMESH_TENANT": tenant,
            "VOICEMESH_TENANTS": f"{tenant}:salon",
            "VOICEMESH_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "PROBE_RECORD": str(record),
            "PROBE_PURPOSE": purpose,
        },
        name="probe",
    )
    await probe.wait_healthy()

    publisher_name = unique("publisher")
    telemetry = setup_telemetry(publisher_name, otlp_endpoint=otlp_receiver.endpoint)
    settings = ServiceSettings(nats_urls=[nats_url], tenant=tenant, tenants=f"{tenant}:salon")
    broker, events, _ = make_broker(settings, telemetry, name=publisher_name)
    await broker.start()
    try:
        event = CallConnected(tenant=tenant, call_id=unique("c"), source=publisher_name)
        with telemetry.tracer.start_as_current_span("tenant backend request") as root:
            await events.publish(event, subjects.call_lifecycle(tenant, event.call_id))
        trace_id = format(root.get_span_context().trace_id, "032x")
    finally:
        await broker.stop()
        telemetry.shutdown()  # flushes the publisher's spans to the receiver

    consumer_span = await otlp_receiver.wait_for(
        lambda s: s.service == "probe" and s.trace_id == trace_id and s.name.endswith(" process")
    )
    publisher_spans = {
        s.span_id: s for s in otlp_receiver.snapshot() if s.service == publisher_name
    }
    parent = publisher_spans.get(consumer_span.parent_span_id)
    assert parent is not None, "the consumer span's parent is not a span of the publishing process"
    assert parent.trace_id == trace_id
    # span names carry the subject pattern, never the tenant or call id
    assert consumer_span.name == "vm.*.call.*.lifecycle process"
    assert all(
        tenant not in s.name and event.call_id not in s.name
        for s in otlp_receiver.snapshot()
        if s.trace_id == trace_id
    )
    await wait_until(lambda: record.exists(), what="the probe to record the event")
