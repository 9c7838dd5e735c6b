"""The NATS side of every service: the broker, event publishing and dead-lettering.

``make_broker`` builds a FastStream ``NatsBroker`` that reconnects forever, carries trace
context and metrics, and runs every handler inside ``DeadLetterMiddleware``:

* a handler that succeeds acks its message;
* ``TransientError`` (and any unexpected exception) NAKs with backoff until the consumer's
  last delivery, then dead-letters;
* ``PermanentError`` or a payload that fails validation is dead-lettered at once with the
  reason, acked, and the consumer goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from faststream import AckPolicy as HandlerAckPolicy
from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, HandlerException, NackMessage
from faststream.message import StreamMessage
from faststream.nats import NatsBroker, PullSub
from faststream.nats.security import NatsCredentials, NatsSecurity, NatsToken, NatsUserPassword
from nats.aio.msg import Msg
from pydantic import ValidationError

from voicemesh.common import compat, subjects
from voicemesh.common.errors import Category, InvalidMessage, category_of
from voicemesh.common.events import DeadLetter, Envelope
from voicemesh.common.settings import ServiceSettings
from voicemesh.common.streams import CONSUMERS, STREAMS, ConsumerSpec
from voicemesh.common.telemetry import Telemetry

__all__ = [
    "DEFAULT_MAX_DELIVER",
    "DeadLetterMiddleware",
    "EventPublisher",
    "make_broker",
    "stream_for",
    "subscribe_durable",
]

log = logging.getLogger(__name__)

compat.patch_fetch_timeout()  # before any pull subscriber exists

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])

DEFAULT_MAX_DELIVER = 5
MAX_DLQ_PAYLOAD = 16 * 1024
PUBLISH_TIMEOUT_S = 5.0


def stream_for(subject: str) -> str | None:
    """The JetStream stream that stores ``subject``, or ``None`` for core-NATS subjects."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != subjects.ROOT:
        return None
    if parts[2] == "call" and len(parts) >= 5:
        return {"lifecycle": "CALLS", "transcript": "TRANSCRIPTS"}.get(parts[4])
    return {"event": "EVENTS", "push": "PUSH", "sms": "SMS", "dlq": "DLQ"}.get(parts[2])


class EventPublisher:
    """Publishes wire events to JetStream, deduplicated by ``event_id``."""

    def __init__(self, broker: NatsBroker, *, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        self._broker = broker
        self._timeout = timeout

    async def publish(
        self, event: Envelope, subject: str, *, headers: dict[str, str] | None = None
    ) -> None:
        stream = stream_for(subject)
        all_headers = {"Nats-Msg-Id": event.event_id, **(headers or {})}
        await self._broker.publish(
            event,
            subject,
            headers=all_headers,
            stream=stream,
            timeout=self._timeout,
            correlation_id=event.event_id,
        )


def subscribe_durable(
    broker: NatsBroker, spec: ConsumerSpec, tenant: str, *, fetch_timeout: float = 2.0
) -> Callable[[Handler], Handler]:
    """Register the decorated function on the provisioned durable pull consumer ``spec``.

    One message at a time (``batch_size=1``) keeps per-call order; the handler's outcome
    decides ack, NAK with backoff or dead-letter (see ``DeadLetterMiddleware``). The
    function is returned unchanged, so it stays callable in unit tests.
    """
    subscriber = broker.subscriber(
        spec.filter_subject(tenant),
        stream=STREAMS[spec.stream].jstream(),
        durable=spec.durable(tenant),
        pull_sub=PullSub(batch_size=1, timeout=fetch_timeout),
        config=spec.config(tenant),
        ack_policy=HandlerAckPolicy.NACK_ON_ERROR,
        # Pull fetches reply to this inbox; a tenant's NATS user may read only its own.
        inbox_prefix=f"{subjects.inbox_prefix(tenant)}.".encode(),
    )

    def register(handler: Handler) -> Handler:
        subscriber(handler)
        return handler

    return register


def _deliveries(raw: Any) -> int | None:
    """How many times JetStream has delivered this message, or ``None`` for core NATS."""
    if not isinstance(raw, Msg):
        return None
    try:
        return int(raw.metadata.num_delivered)
    except Exception:  # not a JetStream message: no metadata in the reply subject
        return None


def _max_deliver(raw: Any) -> int:
    if isinstance(raw, Msg):
        try:
            durable = raw.metadata.consumer
        except Exception:
            return DEFAULT_MAX_DELIVER
        for spec in CONSUMERS:
            if durable and durable.startswith(f"{spec.service}-{spec.purpose}"):
                return spec.max_deliver
    return DEFAULT_MAX_DELIVER


def _check_tenant_fence(msg: StreamMessage[Any]) -> None:
    """An event's ``tenant`` must be the tenant its subject names.

    NATS permissions fence a tenant's publishers into ``vm.<tenant>.>``; this check makes sure
    a message inside that fence cannot claim to be another tenant's event.
    """
    raw = msg.raw_message
    subject = raw.subject if isinstance(raw, Msg) else ""
    subject_tenant = subjects.tenant_of(subject)
    body = msg.body
    if subject_tenant is None or bytes(body or b"").lstrip()[:1] != b"{":
        return
    try:
        claimed = json.loads(body).get("tenant")
    except (ValueError, AttributeError):
        return  # not a JSON object: the handler's validation reports it
    if claimed is not None and claimed != subject_tenant:
        raise InvalidMessage(
            f"tenant mismatch: subject tenant {subject_tenant!r}, payload tenant {claimed!r}"
        )


def _backoff(deliveries: int) -> float:
    return float(min(30, 2 ** max(0, deliveries - 1)))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False)
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:5]
        )
    text = str(exc) or type(exc).__name__
    return text[:2048]


class DeadLetterMiddleware(BaseMiddleware):
    """Decides, for a failed message, between redelivery and the tenant's dead-letter subject."""

    service: str = "voicemesh"
    broker: NatsBroker | None = None

    @classmethod
    def for_service(cls, service: str) -> type[DeadLetterMiddleware]:
        """A middleware class bound to ``service``; ``bind`` gives it the broker later."""
        return type(f"{cls.__name__}[{service}]", (cls,), {"service": service, "broker": None})

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        try:
            _check_tenant_fence(msg)
            return await call_next(msg)
        except (HandlerException, asyncio.CancelledError):
            raise
        except Exception as exc:
            raw = msg.raw_message
            deliveries = _deliveries(raw)
            permanent = isinstance(exc, ValidationError) or category_of(exc) is Category.DEAD_LETTER
            if not permanent and deliveries is not None and deliveries < _max_deliver(raw):
                delay = _backoff(deliveries)
                log.warning(
                    "handler failed (%s, delivery %d), retrying in %.0fs",
                    type(exc).__name__,
                    deliveries,
                    delay,
                )
                raise NackMessage(delay=delay) from exc
            await self._dead_letter(msg, exc, deliveries or 1)
            raise AckMessage() from exc

    async def _dead_letter(
        self, msg: StreamMessage[Any], exc: BaseException, deliveries: int
    ) -> None:
        raw = msg.raw_message
        subject = raw.subject if isinstance(raw, Msg) else str(getattr(raw, "subject", ""))
        tenant = subjects.tenant_of(subject) or "unknown"
        body = bytes(msg.body or b"")
        consumer = ""
        if isinstance(raw, Msg):
            try:
                consumer = raw.metadata.consumer or ""
            except Exception:
                consumer = ""
        entry = DeadLetter(
            tenant=tenant if tenant != "*" else "unknown",
            source=self.service,
            subject=subject,
            consumer=consumer or self.service,
            reason=_reason(exc),
            error_type=type(exc).__name__,
            deliveries=deliveries,
            payload=body[:MAX_DLQ_PAYLOAD].decode("utf-8", errors="replace"),
            payload_truncated=len(body) > MAX_DLQ_PAYLOAD,
        )
        log.error(
            "dead-lettered a message on %s: %s", subjects.low_cardinality(subject), entry.reason
        )
        if self.broker is None:
            log.error("no broker bound to the dead-letter middleware; the entry is only logged")
            return
        try:
            await EventPublisher(self.broker).publish(entry, subjects.dead_letter(entry.tenant))
        except Exception:
            # Raising here would redeliver the message forever; keep it in JetStream instead.
            log.exception("could not publish a dead letter; leaving the message for redelivery")
            raise NackMessage(delay=5.0) from None


def _security(settings: ServiceSettings) -> NatsSecurity | None:
    if settings.nats_creds_file:
        return NatsCredentials(settings.nats_creds_file)
    if settings.nats_user and settings.nats_password:
        return NatsUserPassword(settings.nats_user, settings.nats_password.get_secret_value())
    if settings.nats_token:
        return NatsToken(settings.nats_token.get_secret_value())
    return None


def make_broker(
    settings: ServiceSettings,
    telemetry: Telemetry,
    *,
    name: str,
    middlewares: Sequence[Any] = (),
) -> tuple[NatsBroker, type[DeadLetterMiddleware]]:
    """The service's broker; the caller binds the returned middleware to it."""
    dead_letters = DeadLetterMiddleware.for_service(name)
    broker = NatsBroker(
        settings.nats_urls,
        name=f"voicemesh-{name}",
        security=_security(settings),
        # A per-tenant pod's NATS user may only read its own inboxes (see deploy/k8s).
        inbox_prefix=subjects.inbox_prefix(settings.tenant),
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=3,
        graceful_timeout=settings.graceful_timeout,
        middlewares=[*telemetry.middlewares, dead_letters, *middlewares],
        logger=logging.getLogger(f"voicemesh.{name}.bus"),
        log_level=logging.DEBUG,
    )
    dead_letters.broker = broker
    return broker, dead_letters
