"""Stream provisioning is idempotent and keeps what an operator changed."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from voicemesh.common.contracts import streams


async def test_apply_creates_then_changes_nothing(nats: NatsClient) -> None:
    js = nats.jetstream()
    first = await streams.apply(js)
    assert {r.name for r in first if r.kind == "stream"} == set(streams.STREAMS)
    assert all(r.action == "created" for r in first)
    second = await streams.apply(js)
    assert all(r.action == "unchanged" for r in second)
    info = await js.consumer_info("CALLS", "audit-calls")
    assert info.config.filter_subject == "vm.*.call.*.lifecycle"
    assert info.config.max_deliver == streams.consumer("audit", "calls").max_deliver


async def test_operator_changes_survive_apply(nats: NatsClient) -> None:
    js = nats.jetstream()
    await streams.apply(js, services={"audit"})
    config = (await js.stream_info("CALLS")).config
    config.max_age = 3600.0
    config.max_msgs = 12345
    config.subjects = [*(config.subjects or []), "ops.extra.>"]
    await js.update_stream(config)
    consumer = (await js.consumer_info("CALLS", "audit-calls")).config
    consumer.max_deliver = 9
    await js.add_consumer("CALLS", consumer)  # an update through the same API

    results = await streams.apply(js, services={"audit"})
    assert {r.action for r in results} == {"unchanged"}
    after = (await js.stream_info("CALLS")).config
    assert after.max_age == 3600.0
    assert after.max_msgs == 12345
    assert "ops.extra.>" in (after.subjects or [])
    assert (await js.consumer_info("CALLS", "audit-calls")).config.max_deliver == 9


async def test_missing_subject_is_added_without_touching_other_settings(nats: NatsClient) -> None:
    js = nats.jetstream()
    await streams.apply(js, services=set())
    config = (await js.stream_info("DLQ")).config
    config.subjects = ["ops.only.>"]
    config.max_age = 300.0
    await js.update_stream(config)
    results = await streams.apply(js, services=set())
    assert [r.action for r in results if r.name == "DLQ"] == ["subjects_added"]
    after = (await js.stream_info("DLQ")).config
    assert after.subjects == ["ops.only.>", "vm.*.dlq"]
    assert after.max_age == 300.0


async def test_per_tenant_consumers_filter_on_the_tenant(nats: NatsClient) -> None:
    js = nats.jetstream()
    await streams.apply(js, tenants=["acme"], services={"transcript"})
    info = await js.consumer_info("TRANSCRIPTS", "transcript-segments-acme")
    assert info.config.filter_subject == "vm.acme.call.*.transcript"
