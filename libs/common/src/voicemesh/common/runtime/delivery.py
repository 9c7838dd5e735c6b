"""The one delivery policy for JetStream consumers, FastStream handlers and raw lanes alike.

A handler's outcome decides what becomes of its message:

* success: ack, after the handler has committed what it did;
* ``TransientError`` or an unexpected exception: NAK with backoff (1, 2, 4 … 30 s) until
  the consumer's last delivery;
* ``PermanentError`` (bad payload, unknown tenant, a validation failure), or the last
  delivery: a ``DeadLetter`` with the reason and the payload (truncated, PHI masked for
  healthcare-class tenants) is published to the tenant's DLQ and stored, and only then is
  the message terminated. If the dead letter cannot be stored, the message is NAKed and
  comes back: nothing accepted is lost.

``DeadLetterMiddleware`` (``runtime.bus``) and the pull lanes of push and audit use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from pydantic import ValidationError

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.errors import (
    Category,
    InvalidMessage,
    TransientError,
    category_of,
    describe_validation_error,
)
from voicemesh.common.contracts.events import DeadLetter
from voicemesh.common.contracts.tenancy import TENANT_ID_PATTERN
from voicemesh.common.runtime.logs import redact_phi
from voicemesh.common.runtime.publisher import JetStreamPublisher

__all__ = [
    "DEFAULT_MAX_DELIVER",
    "MAX_DLQ_PAYLOAD",
    "REDACTED_HEADER",
    "Delivery",
    "backoff",
    "check_tenant_fence",
    "deliveries_of",
    "failure_reason",
    "retry_delay",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_DELIVER = 5
MAX_DLQ_PAYLOAD = 16 * 1024
MAX_BACKOFF_S = 30.0
#: When a dead letter cannot be stored, the message comes back after this long.
DLQ_RETRY_S = 5.0
#: Set on a dead letter whose payload had PHI masked: it is not the original message.
REDACTED_HEADER = "Voicemesh-Dlq-Redacted"


def backoff(deliveries: int) -> float:
    """Seconds before delivery ``deliveries + 1``: 1, 2, 4 … at most 30."""
    return float(min(MAX_BACKOFF_S, 2 ** max(0, deliveries - 1)))


def failure_reason(exc: BaseException) -> str:
    """Why a message failed, in one line (at most 2 KiB)."""
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    return (str(exc) or type(exc).__name__)[:2048]


def retry_delay(exc: BaseException, deliveries: int | None, max_deliver: int) -> float | None:
    """The NAK delay for a failed message, or ``None`` when it is to be dead-lettered."""
    permanent = isinstance(exc, ValidationError) or category_of(exc) is Category.DEAD_LETTER
    if permanent or deliveries is None or deliveries >= max_deliver:
        return None
    # A dependency that said when to come back (HTTP Retry-After) is not asked sooner.
    asked = exc.retry_after_s if isinstance(exc, TransientError) else None
    if asked is not None and asked > 0:
        return max(backoff(deliveries), asked)
    return backoff(deliveries)


def check_tenant_fence(subject: str, body: bytes) -> None:
    """An event's ``tenant`` must be the tenant its subject names.

    NATS permissions fence a tenant's publishers into ``vm.<tenant>.>``; this check makes
    sure a message inside that fence cannot claim to be another tenant's event.
    """
    subject_tenant = subjects.tenant_of(subject)
    if subject_tenant is None or body.lstrip()[:1] != b"{":
        return
    try:
        claimed = json.loads(body).get("tenant")
    except (ValueError, AttributeError):
        return  # not a JSON object: the handler's validation reports it
    if claimed is not None and claimed != subject_tenant:
        raise InvalidMessage(
            f"tenant mismatch: subject tenant {subject_tenant!r}, payload tenant {claimed!r}"
        )


def deliveries_of(msg: object) -> int | None:
    """How many times JetStream has delivered ``msg``, or ``None`` for core NATS."""
    if not isinstance(msg, Msg):
        return None
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # not a JetStream message: no metadata in its reply subject
        return None


@dataclass
class Delivery:
    """The policy bound to one service: who it is, where dead letters go, what is PHI."""

    source: str
    publisher: JetStreamPublisher
    #: Tenants whose payloads are masked in dead letters (healthcare-class verticals).
    handles_phi: Callable[[str], bool] = lambda _tenant: False

    def dead_letter(
        self,
        *,
        subject: str,
        consumer: str,
        body: bytes,
        exc: BaseException,
        deliveries: int,
    ) -> DeadLetter:
        tenant = subjects.tenant_of(subject) or "unknown"
        if tenant == "*" or not re.fullmatch(TENANT_ID_PATTERN, tenant):
            tenant = "unknown"  # a subject token no tenant id can have
        text = body[:MAX_DLQ_PAYLOAD].decode("utf-8", errors="replace")
        if self.handles_phi(tenant):
            text = redact_phi(text)
        return DeadLetter(
            tenant=tenant,
            source=self.source,
            subject=subject,
            consumer=consumer or self.source,
            reason=failure_reason(exc),
            error_type=type(exc).__name__,
            deliveries=deliveries,
            payload=text,
            payload_truncated=len(body) > MAX_DLQ_PAYLOAD,
        )

    async def store_dead_letter(self, entry: DeadLetter) -> None:
        """Publish ``entry`` to its tenant's DLQ and wait until JetStream has stored it."""
        log.error(
            "dead-lettered a message on %s: %s",
            subjects.low_cardinality(entry.subject),
            entry.reason,
        )
        # Marked, so that ``voicemesh dlq replay`` never republishes a masked payload.
        headers = {REDACTED_HEADER: "1"} if self.handles_phi(entry.tenant) else None
        await self.publisher.publish(entry, subjects.dead_letter(entry.tenant), headers=headers)

    async def settle(
        self, msg: Msg, exc: BaseException, *, consumer: str, max_deliver: int
    ) -> None:
        """A raw JetStream message whose handler failed: NAK, or dead-letter then term."""
        deliveries = deliveries_of(msg) or 1
        delay = retry_delay(exc, deliveries, max_deliver)
        if delay is not None:
            log.warning(
                "%s: handling failed (%s, delivery %d), retrying in %.0fs",
                consumer,
                type(exc).__name__,
                deliveries,
                delay,
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
            return
        entry = self.dead_letter(
            subject=msg.subject,
            consumer=consumer,
            body=bytes(msg.data or b""),
            exc=exc,
            deliveries=deliveries,
        )
        try:
            await self.store_dead_letter(entry)
        except Exception:
            log.exception("could not store a dead letter; the message will come back")
            with contextlib.suppress(Exception):
                await msg.nak(delay=DLQ_RETRY_S)
            return
        with contextlib.suppress(Exception):
            await msg.term()
