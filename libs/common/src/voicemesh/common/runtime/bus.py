"""The FastStream side of every service: the broker, durable subscribers and dead-lettering.

``make_broker`` builds the service's broker (connected through ``runtime.connection``,
reconnecting forever, carrying trace context and metrics) and runs every handler inside
``DeadLetterMiddleware``, which applies the one delivery policy (``runtime.delivery``):
ack on success, NAK with backoff on a transient failure, dead-letter then term on a
permanent one or on the last delivery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from faststream import AckPolicy as HandlerAckPolicy
from faststream import BaseMiddleware
from faststream.exceptions import HandlerException, NackMessage, RejectMessage
from faststream.message import StreamMessage
from faststream.nats import NatsBroker, PullSub
from nats.aio.msg import Msg

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.streams import CONSUMERS, STREAMS, ConsumerSpec
from voicemesh.common.runtime import compat
from voicemesh.common.runtime.connection import make_nats_broker
from voicemesh.common.runtime.delivery import (
    DEFAULT_MAX_DELIVER,
    DLQ_RETRY_S,
    Delivery,
    check_tenant_fence,
    deliveries_of,
    retry_delay,
)
from voicemesh.common.runtime.publisher import JetStreamPublisher
from voicemesh.common.runtime.settings import ServiceSettings
from voicemesh.common.runtime.telemetry import Telemetry

__all__ = [
    "DeadLetterMiddleware",
    "make_broker",
    "subscribe_durable",
]

log = logging.getLogger(__name__)

compat.patch_fetch_timeout()  # before any pull subscriber exists

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


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
    raw = msg.raw_message
    if isinstance(raw, Msg):  # a batch (a list of messages) is fenced by its handler
        check_tenant_fence(raw.subject, bytes(msg.body or b""))


class DeadLetterMiddleware(BaseMiddleware):
    """Applies the delivery policy to a FastStream handler's outcome (see the module doc)."""

    delivery: Delivery | None = None

    @classmethod
    def bound_to(cls, delivery: Delivery) -> type[DeadLetterMiddleware]:
        """A middleware class that dead-letters through ``delivery``."""
        return type(f"{cls.__name__}[{delivery.source}]", (cls,), {"delivery": delivery})

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        try:
            _check_tenant_fence(msg)
            return await call_next(msg)
        except (HandlerException, asyncio.CancelledError):
            raise
        except Exception as exc:
            raw = msg.raw_message
            if isinstance(raw, list):  # a batch: its handler settles each message itself
                log.error("a batch handler failed (%s); its messages come back", type(exc).__name__)
                raise
            deliveries = deliveries_of(raw)
            delay = retry_delay(exc, deliveries, _max_deliver(raw))
            if delay is not None:
                log.warning(
                    "handler failed (%s, delivery %d), retrying in %.0fs",
                    type(exc).__name__,
                    deliveries or 0,
                    delay,
                )
                raise NackMessage(delay=delay) from exc
            await self._dead_letter(msg, exc, deliveries or 1)
            raise RejectMessage() from exc

    async def _dead_letter(
        self, msg: StreamMessage[Any], exc: BaseException, deliveries: int
    ) -> None:
        raw = msg.raw_message
        subject = raw.subject if isinstance(raw, Msg) else str(getattr(raw, "subject", ""))
        consumer = ""
        if isinstance(raw, Msg):
            try:
                consumer = raw.metadata.consumer or ""
            except Exception:
                consumer = ""
        if self.delivery is None:
            log.error("no delivery policy bound to the dead-letter middleware")
            raise NackMessage(delay=DLQ_RETRY_S) from None
        entry = self.delivery.dead_letter(
            subject=subject,
            consumer=consumer,
            body=bytes(msg.body or b""),
            exc=exc,
            deliveries=deliveries,
        )
        try:
            await self.delivery.store_dead_letter(entry)
        except Exception:
            # Terminating now would lose the message: keep it in JetStream instead.
            log.exception("could not store a dead letter; leaving the message for redelivery")
            raise NackMessage(delay=DLQ_RETRY_S) from None


def make_broker(
    settings: ServiceSettings,
    telemetry: Telemetry,
    *,
    name: str,
    handles_phi: Callable[[str], bool] = lambda _tenant: False,
    middlewares: Sequence[Any] = (),
) -> tuple[NatsBroker, JetStreamPublisher, Delivery]:
    """The service's broker, its publisher and its delivery policy."""
    holder: list[NatsBroker] = []
    publisher = JetStreamPublisher(lambda: holder[0].connection)
    delivery = Delivery(source=name, publisher=publisher, handles_phi=handles_phi)
    broker = make_nats_broker(
        settings,
        service=name,
        graceful_timeout=settings.graceful_timeout,
        middlewares=[
            *telemetry.middlewares,
            DeadLetterMiddleware.bound_to(delivery),
            *middlewares,
        ],
    )
    holder.append(broker)
    return broker, publisher, delivery
