"""From JetStream messages to audit rows: validation, batching, ack, retry, dead letters.

The audit consumers pull in batches (hundreds of events a second is normal during calls)
and acknowledge each message only after the transaction that recorded it has committed.
Known event types are validated against their wire model; event types this service does
not know yet (added by a newer service) are recorded if they carry a valid envelope, so
the audit trail never silently misses an event kind.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Annotated, Any

from faststream import AckPolicy as HandlerAckPolicy
from faststream import Context
from faststream.message import StreamMessage
from faststream.nats import NatsBroker, PullSub
from faststream.nats.message import NatsMessage
from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voicemesh.audit.anchor import HEAD_EVENT_TYPE
from voicemesh.audit.chain import ChainEntry, canonical_json, iso_timestamp
from voicemesh.audit.store import ChainWriter
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.errors import (
    InvalidMessage,
    PermanentError,
    UnknownTenant,
    describe_validation_error,
)
from voicemesh.common.contracts.events import CALL_ID_PATTERN, decode_event, event_schemas
from voicemesh.common.contracts.streams import STREAMS, ConsumerSpec
from voicemesh.common.contracts.tenancy import TENANT_ID_PATTERN, TenantRegistry
from voicemesh.common.runtime.delivery import Delivery

__all__ = ["AuditIngest", "parse_message"]

log = logging.getLogger(__name__)


class _Envelope(BaseModel):
    """The envelope every voicemesh event has; enough to audit an event type we do not know."""

    model_config = ConfigDict(frozen=True, extra="allow")

    event_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    occurred_at: datetime
    tenant: str = Field(pattern=TENANT_ID_PATTERN)
    call_id: str | None = Field(default=None, pattern=CALL_ID_PATTERN)
    source: str = Field(min_length=1, max_length=64)
    type: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")
    schema_version: int = 1


@cache
def _known_types() -> frozenset[str]:
    return frozenset(event_schemas())


def parse_message(subject: str, data: bytes, tenants: TenantRegistry) -> ChainEntry:
    """The audit entry for one message, or a ``PermanentError`` saying why there is none."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(raw, dict):
        raise InvalidMessage("an event is a JSON object")
    payload: dict[str, Any]
    if raw.get("type") in _known_types():
        event = decode_event(data)  # InvalidMessage with the field errors
        payload = event.model_dump(mode="json")
        envelope = _Envelope.model_validate(payload)
    else:
        try:
            envelope = _Envelope.model_validate(raw)
        except ValidationError as exc:
            raise InvalidMessage(describe_validation_error(exc)) from None
        payload = raw
    subject_tenant = subjects.tenant_of(subject)
    if envelope.tenant != subject_tenant:
        raise InvalidMessage(
            f"event tenant {envelope.tenant!r} does not match its subject's tenant"
        )
    if envelope.tenant not in tenants:
        raise UnknownTenant(f"tenant {envelope.tenant!r} is not served here")
    on_call = subjects.parse_call_subject(subject)
    if on_call is not None and envelope.call_id != on_call[1]:
        raise InvalidMessage("event call_id does not match its subject's call id")
    return ChainEntry(
        tenant=envelope.tenant,
        event_id=envelope.event_id,
        event_type=envelope.type,
        call_id=envelope.call_id,
        source=envelope.source,
        subject=subject,
        occurred_at=iso_timestamp(envelope.occurred_at),
        payload=canonical_json(payload),
    )


async def _raw_bodies(msg: StreamMessage[Any]) -> list[bytes]:
    # Decoding is ours (per message, with dead letters); FastStream's JSON decode of a batch
    # would fail the whole batch on one malformed body.
    return [m.data for m in msg.raw_message]


@dataclass(eq=False)
class AuditIngest:
    """The audit consumers of one process: batch in, one transaction, ack each message.

    A message that cannot be recorded is settled by the service's delivery policy
    (``delivery``): NAKed with backoff, or dead-lettered and terminated.
    """

    broker: NatsBroker
    writer: ChainWriter
    tenants: TenantRegistry
    delivery: Delivery
    batch_size: int = 250
    batch_timeout_s: float = 0.2
    recorded: int = field(default=0, init=False)
    duplicates: int = field(default=0, init=False)

    def subscribe(self, spec: ConsumerSpec, tenant: str) -> None:
        """Consume the provisioned durable ``spec`` for ``tenant`` (``*`` for all)."""
        durable = spec.durable(tenant)
        subscriber = self.broker.subscriber(
            spec.filter_subject(tenant),
            stream=STREAMS[spec.stream].jstream(),
            durable=durable,
            pull_sub=PullSub(batch_size=self.batch_size, timeout=self.batch_timeout_s, batch=True),
            config=spec.config(tenant),
            ack_policy=HandlerAckPolicy.MANUAL,
            decoder=_raw_bodies,
            title=f"audit:{spec.purpose}",
            # Pull fetches reply to this inbox; a tenant's NATS user may read only its own.
            inbox_prefix=f"{subjects.inbox_prefix(tenant)}.".encode(),
        )

        async def on_batch(
            bodies: list[bytes], message: Annotated[NatsMessage, Context("message")]
        ) -> None:
            del bodies  # the raw messages carry them, with their subjects and metadata
            raw: list[Msg] = message.raw_message  # type: ignore[assignment]  # a batch subscriber
            await self.handle(raw, consumer=durable, max_deliver=spec.max_deliver)

        subscriber(on_batch)

    async def handle(self, messages: list[Msg], *, consumer: str, max_deliver: int) -> None:
        """Record a batch; every message ends acked, NAKed with backoff or dead-lettered."""
        accepted: list[tuple[Msg, ChainEntry]] = []
        for msg in messages:
            try:
                entry = parse_message(msg.subject, msg.data, self.tenants)
            except PermanentError as exc:
                await self.delivery.settle(msg, exc, consumer=consumer, max_deliver=max_deliver)
                continue
            if entry.event_type == HEAD_EVENT_TYPE:
                # The chain's own signed heads: kept by the stream, outside the chain (each
                # recorded head would move the head, to be signed again, forever).
                await msg.ack()
                continue
            accepted.append((msg, entry))
        if not accepted:
            return
        try:
            new = await self.writer.submit([entry for _, entry in accepted])
        except Exception as exc:
            log.warning("could not record %d audit events (%s)", len(accepted), type(exc).__name__)
            for msg, _ in accepted:
                await self.delivery.settle(msg, exc, consumer=consumer, max_deliver=max_deliver)
            return
        for msg, entry in accepted:
            if (entry.tenant, entry.event_id) in new:
                self.recorded += 1
            else:
                self.duplicates += 1
            await msg.ack()
