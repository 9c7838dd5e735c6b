"""The wire contract: envelopes, the discriminated union and JSON Schema export."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from voicemesh.common import (
    CallEnded,
    CallRequested,
    EndReason,
    InvalidMessage,
    SmsJob,
    TranscriptSegment,
    decode_event,
    encode_event,
)
from voicemesh.common.contracts.events import event_schemas


def test_every_event_round_trips_through_the_union() -> None:
    events = [
        CallRequested(tenant="acme", call_id="c1", source="backend", user_id="u1"),
        CallEnded(tenant="acme", call_id="c1", source="gateway", reason=EndReason.HANGUP),
        TranscriptSegment(
            tenant="acme",
            call_id="c1",
            source="agent",
            segment_id="c1:1",
            speaker="caller",
            text="hello",
            start_s=0,
            end_s=1.2,
        ),
        SmsJob(
            tenant="acme",
            source="calendar",
            idempotency_key="k1",
            to="+15551234567",
            body="See you at 3",
        ),
    ]
    for event in events:
        decoded = decode_event(encode_event(event))
        assert decoded == event
        assert type(decoded) is type(event)


def test_envelope_fields_are_always_present() -> None:
    event = CallRequested(tenant="acme", call_id="c1", source="backend", user_id="u1")
    body = json.loads(encode_event(event))
    for key in ("event_id", "occurred_at", "tenant", "call_id", "source", "schema_version", "type"):
        assert key in body
    assert body["schema_version"] == 1


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"not json", "json"),
        (b'{"type": "call.teleported", "tenant": "acme", "source": "x"}', "type"),
        (b'{"type": "call.ended", "tenant": "acme", "call_id": "c1", "source": "g"}', "reason"),
        (
            b'{"type": "call.ended", "tenant": "ACME!", "call_id": "c1", "source": "g",'
            b' "reason": "hangup"}',
            "tenant",
        ),
        (
            b'{"type": "call.answered", "tenant": "acme", "call_id": "c.1", "source": "g"}',
            "call_id",
        ),
        (
            b'{"type": "call.answered", "tenant": "acme", "call_id": "c1", "source": "g", "x": 1}',
            "x",
        ),
    ],
)
def test_bad_payloads_raise_invalid_message_with_the_reason(payload: bytes, fragment: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_event(payload)
    assert fragment.lower() in str(info.value).lower()


def test_events_are_immutable() -> None:
    event = CallRequested(tenant="acme", call_id="c1", source="backend", user_id="u1")
    with pytest.raises(ValidationError):
        event.user_id = "u2"  # type: ignore[misc]


def test_json_schemas_cover_every_event() -> None:
    schemas = event_schemas()
    assert {
        "call.requested",
        "call.ended",
        "transcript.segment",
        "tool.request",
        "tool.result",
        "push.job",
        "sms.job",
        "dead_letter",
    } <= set(schemas)
    assert "reason" in schemas["call.ended"]["required"]
