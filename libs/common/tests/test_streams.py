"""Stream provisioning is idempotent, sets every stream's limits and keeps what else an
operator changed."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.errors import APIError

from voicemesh.common.contracts import streams, subjects
from voicemesh.common.runtime.settings import StreamSettings


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


async def test_every_stream_is_created_with_byte_and_per_subject_limits(nats: NatsClient) -> None:
    js = nats.jetstream()
    await streams.apply(js, services=set())
    for name, spec in streams.STREAMS.items():
        config = (await js.stream_info(name)).config
        assert config.max_bytes == spec.limits.max_bytes > 0, name
        assert config.max_msgs_per_subject == spec.limits.max_msgs_per_subject > 0, name
        assert config.discard == DiscardPolicy.NEW, name
    assert (await js.stream_info("PUSH")).config.discard_new_per_subject


async def test_apply_sets_limits_on_existing_streams_and_keeps_the_rest(nats: NatsClient) -> None:
    """Streams made before they had limits (or by hand) get them; nothing else changes."""
    js = nats.jetstream()
    spec = streams.stream("EVENTS")
    await js.add_stream(StreamConfig(name="EVENTS", subjects=list(spec.subjects), max_age=600.0))
    results = await streams.apply(js, services=set())
    assert [r.action for r in results if r.name == "EVENTS"] == ["limits_set"]
    after = (await js.stream_info("EVENTS")).config
    assert (after.max_bytes, after.max_msgs_per_subject, after.discard) == (
        spec.limits.max_bytes,
        spec.limits.max_msgs_per_subject,
        DiscardPolicy.NEW,
    )
    assert after.max_age == 600.0
    assert {r.action for r in await streams.apply(js, services=set())} == {"unchanged"}

    # The operator's settings change them on the next apply.
    configured = StreamSettings(max_bytes={"EVENTS": 64 * streams.MIB}).limits()
    results = await streams.apply(js, services=set(), limits=configured)
    assert [r.name for r in results if r.action == "limits_set"] == ["EVENTS"]
    assert (await js.stream_info("EVENTS")).config.max_bytes == 64 * streams.MIB


async def test_one_tenants_push_backlog_is_capped_and_not_the_others(nats: NatsClient) -> None:
    js = nats.jetstream()
    limits = StreamSettings(max_msgs_per_subject={"PUSH": 3}).limits()
    await streams.apply(js, services=set(), limits=limits)
    for _ in range(3):
        await js.publish(subjects.push_voip("flood"), b"{}", stream="PUSH")
    with pytest.raises(APIError, match="maximum messages per subject exceeded"):
        await js.publish(subjects.push_voip("flood"), b"{}", stream="PUSH")
    await js.publish(subjects.push_voip("quiet"), b"{}", stream="PUSH")  # its own budget
    assert (await js.stream_info("PUSH")).state.messages == 4  # nothing stored was dropped


def test_stream_settings_refuse_unknown_streams() -> None:
    with pytest.raises(ValueError, match="no such streams"):
        StreamSettings(max_bytes={"CALS": 1})
