"""The transcript service application: ``create_app(settings)`` wires it, ``__main__`` runs it.

One durable consumer (``transcript-segments``) stores segments in order, one at a time;
the HTTP API serves transcripts, exports and search. Segment text is never logged and
never put on a span: for healthcare-class tenants it is protected health information.
"""

from __future__ import annotations

import logging
from typing import Annotated

from faststream import Context
from faststream.nats.message import NatsMessage
from pydantic import ValidationError

from voicemesh.common import MeshService
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.errors import (
    InvalidMessage,
    describe_validation_error,
)
from voicemesh.common.contracts.events import TranscriptSegment
from voicemesh.common.contracts.streams import consumer
from voicemesh.common.runtime.auth import ApiKeys
from voicemesh.common.runtime.bus import subscribe_durable
from voicemesh.transcript.api import transcript_router
from voicemesh.transcript.settings import TranscriptSettings
from voicemesh.transcript.store import TranscriptStore

__all__ = ["create_app", "parse_segment"]

log = logging.getLogger(__name__)

DESCRIPTION = "Transcript service: durable per-call transcripts, search and export."


def parse_segment(subject: str, data: bytes) -> TranscriptSegment:
    """Validate a segment against its subject, or raise ``InvalidMessage`` saying why.

    Parsed here rather than by FastStream so that no error message can carry the text:
    pydantic quotes the offending input in its own messages.
    """
    try:
        segment = TranscriptSegment.model_validate_json(data)
    except ValidationError as exc:
        reason = describe_validation_error(exc)
        raise InvalidMessage(f"not a transcript segment: {reason}") from None
    on_call = subjects.parse_call_subject(subject)
    if on_call is None or on_call[0] != segment.tenant or on_call[1] != segment.call_id:
        raise InvalidMessage("segment tenant or call_id does not match its subject")
    return segment


def create_app(settings: TranscriptSettings) -> MeshService:
    service = MeshService("transcript", settings, description=DESCRIPTION)
    store = TranscriptStore(service.database())
    tracer = service.telemetry.tracer

    @subscribe_durable(service.broker, consumer("transcript", "segments"), settings.tenant)
    async def on_segment(message: Annotated[NatsMessage, Context("message")]) -> None:
        raw = message.raw_message
        segment = parse_segment(raw.subject, raw.data)
        service.tenants.served(segment.tenant)
        with tracer.start_as_current_span("transcript.store") as span:
            # Ids and sizes only: the text stays out of spans for every tenant.
            span.set_attribute("voicemesh.tenant", segment.tenant)
            span.set_attribute("voicemesh.call_id", segment.call_id)
            span.set_attribute("transcript.segment_id", segment.segment_id)
            span.set_attribute("transcript.speaker", segment.speaker.value)
            span.set_attribute("transcript.final", segment.final)
            span.set_attribute("transcript.chars", len(segment.text))
            stored = await store.add(segment)
            span.set_attribute("transcript.stored", stored)
        log.debug("segment %s %s", segment.segment_id, "stored" if stored else "already stored")

    service.http.include_router(
        transcript_router(store, ApiKeys.from_settings(settings), service.tenants, tracer)
    )
    return service
