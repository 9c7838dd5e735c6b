"""Dead letters after they are stored: how many wait, and reading and replaying them.

* ``DlqDepth`` keeps the gauge ``voicemesh_dlq_depth{tenant}``: the dead letters each served
  tenant has in the DLQ stream. It counts with one durable consumer per tenant
  (``DEPTH_CONSUMER``, never fetched from): its pending count is the tenant's dead letters,
  and it falls when one is replayed or expires. A consumer rather than the stream's
  per-subject counts, because a tenant's NATS user may read its own consumers but not the
  stream's subject list, which names every other tenant.
* ``read`` lists a tenant's dead letters (``StoredDeadLetter``: the stream sequence is the
  id an operator names); ``replay`` republishes one to its original subject and removes it.

The ``voicemesh dlq`` commands use these with operator credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Gauge

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import DeadLetter
from voicemesh.common.contracts.ids import derived_id, message_id
from voicemesh.common.contracts.streams import consumer, stream_for
from voicemesh.common.runtime.delivery import REDACTED_HEADER
from voicemesh.common.runtime.tasks import PeriodicTask

__all__ = [
    "DEPTH_CONSUMER",
    "DLQ_STREAM",
    "REDACTED_HEADER",
    "DlqDepth",
    "StoredDeadLetter",
    "read",
    "replay",
    "replay_id",
]

log = logging.getLogger(__name__)

DLQ_STREAM = "DLQ"
#: Counts each tenant's dead letters; nothing fetches from it, so nothing is ever acked.
DEPTH_CONSUMER = consumer("audit", "dlq")
DEPTH_INTERVAL_S = 15.0
_MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True)
class StoredDeadLetter:
    """One entry of the DLQ stream: its sequence (the operator's id) and the dead letter."""

    seq: int
    entry: DeadLetter
    redacted: bool

    def not_replayable(self) -> str | None:
        """Why the stored payload is not the original message, or ``None`` if it is."""
        if self.redacted:
            return "its payload was redacted (PHI masked)"
        if self.entry.payload_truncated:
            return "its payload was truncated"
        if "\ufffd" in self.entry.payload:
            return "its payload was not UTF-8 and was stored with replacements"
        return None


def replay_id(stored: StoredDeadLetter) -> str:
    """The event id a replay is published under: new to JetStream, the same on a retry."""
    return derived_id(stored.entry.tenant, "dlq-replay", stored.entry.event_id)


async def read(
    js: JetStreamContext, tenant: str, *, ids: Iterable[int] | None = None
) -> list[StoredDeadLetter]:
    """``tenant``'s dead letters, oldest first (only those with sequence ``ids`` if given)."""
    subject = subjects.dead_letter(tenant)
    wanted = None if ids is None else set(ids)
    found: list[StoredDeadLetter] = []
    seq = min(wanted) if wanted else 1
    while wanted is None or seq <= max(wanted, default=0):
        try:
            raw = await js.get_msg(DLQ_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        assert raw.seq is not None
        seq = raw.seq + 1
        if wanted is not None and raw.seq not in wanted:
            continue
        redacted = bool(raw.headers and raw.headers.get(REDACTED_HEADER))
        entry = DeadLetter.model_validate_json(raw.data or b"")
        found.append(StoredDeadLetter(raw.seq, entry, redacted))
    return found


async def replay(js: JetStreamContext, stored: StoredDeadLetter) -> None:
    """Republish the original payload to its original subject, then remove the entry.

    Raises ``ValueError`` for an entry whose payload is not the original. The replay's
    message id is derived from the dead letter (never the original's, which JetStream
    would drop as a duplicate); a replay retried after a failed removal is dropped instead.
    """
    entry = stored.entry
    if (why := stored.not_replayable()) is not None:
        raise ValueError(f"dead letter {stored.seq} cannot be replayed: {why}")
    if subjects.tenant_of(entry.subject) != entry.tenant:
        raise ValueError(f"dead letter {stored.seq} names a subject outside its tenant")
    await js.publish(
        entry.subject,
        entry.payload.encode(),
        stream=stream_for(entry.subject),
        headers={_MSG_ID: message_id(entry.tenant, replay_id(stored))},
    )
    await js.delete_msg(DLQ_STREAM, stored.seq)


class DlqDepth:
    """``voicemesh_dlq_depth{tenant}``, refreshed every ``interval_s`` (see the module doc).

    ``tenants`` is bounded per process (its own tenant, or the registry's), so the label is.
    ``jetstream`` is called each round: a broker's connection exists only once it started.
    """

    def __init__(
        self,
        jetstream: Callable[[], JetStreamContext],
        tenants: Sequence[str],
        registry: CollectorRegistry,
        *,
        interval_s: float = DEPTH_INTERVAL_S,
    ) -> None:
        self._jetstream = jetstream
        self.tenants = list(tenants)
        self.gauge = Gauge(
            "voicemesh_dlq_depth",
            "Dead letters waiting in the DLQ stream, per tenant",
            ["tenant"],
            registry=registry,
        )
        self._task = PeriodicTask(self.refresh, interval_s=interval_s, name="dlq-depth")

    async def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def refresh(self) -> None:
        """Read every served tenant's depth now."""
        js = self._jetstream()
        for tenant in self.tenants:
            durable = DEPTH_CONSUMER.durable(tenant)
            try:
                info = await js.consumer_info(DLQ_STREAM, durable)
            except NotFoundError:
                config = DEPTH_CONSUMER.config(tenant)
                # Named: created through the filtered CREATE subject a tenant's NATS user
                # may use (the legacy DURABLE.CREATE carries no filter to fence).
                config.name = config.durable_name
                info = await js.add_consumer(DLQ_STREAM, config)
            depth = (info.num_pending or 0) + (info.num_ack_pending or 0)
            self.gauge.labels(tenant=tenant).set(depth)
