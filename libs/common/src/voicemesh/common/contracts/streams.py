"""JetStream streams and durable consumers, defined once and provisioned idempotently.

``apply`` creates what is missing and otherwise changes two things only: a subject the code
needs and a stream lacks is added, and each stream's storage limits (``StreamLimits``) are
set to the configured ones. Anything else an operator changed (a stream's retention, a
consumer's ``max_deliver``) is kept. Services subscribe with ``declare=False`` streams, so
starting a service changes nothing.

Limits: the JetStream store is shared by every tenant, so every stream has a ``max_bytes``
and a per-subject message limit. A full stream refuses new messages (``DiscardPolicy.NEW``)
rather than deleting stored ones nobody has consumed yet: the publisher gets the error. The
per-subject limit is a per-tenant limit where the subject is the tenant's own (the PUSH and
SMS queues and the DLQ are one subject per tenant, events one per tenant and type) and a
per-call one on CALLS and TRANSCRIPTS: one tenant's flood reaches its own ceiling first and
costs only its own oldest messages (its pending push jobs are refused instead). The defaults
suit the shipped 9 GB store per server; ``VOICEMESH_STREAM_*`` (``StreamSettings``) changes
them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from faststream.nats import JStream
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from voicemesh.common.contracts import subjects

__all__ = [
    "CONSUMERS",
    "STREAMS",
    "ApplyResult",
    "ConsumerSpec",
    "StreamLimits",
    "StreamSpec",
    "apply",
    "consumer",
    "durable_name",
    "stream",
    "stream_for",
]

log = logging.getLogger(__name__)

DAY = 86400.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class StreamLimits:
    """How much one stream may hold, in all and per subject (see the module docstring)."""

    max_bytes: int
    max_msgs_per_subject: int
    #: Refuse, rather than delete the oldest, per subject too (work queues: pending jobs).
    discard_new_per_subject: bool = False

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_msgs_per_subject < 1:
            raise ValueError("stream limits must be positive")

    def differs_from(self, config: StreamConfig) -> bool:
        return (
            config.max_bytes != self.max_bytes
            or config.max_msgs_per_subject != self.max_msgs_per_subject
            or config.discard != DiscardPolicy.NEW
            or bool(config.discard_new_per_subject) != self.discard_new_per_subject
        )

    def set_on(self, config: StreamConfig) -> StreamConfig:
        config.max_bytes = self.max_bytes
        config.max_msgs_per_subject = self.max_msgs_per_subject
        config.discard = DiscardPolicy.NEW
        config.discard_new_per_subject = self.discard_new_per_subject
        return config


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    limits: StreamLimits
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    max_age_s: float = 7 * DAY
    duplicate_window_s: float = 120.0
    description: str = ""

    def config(
        self, storage: StorageType, replicas: int, limits: StreamLimits | None = None
    ) -> StreamConfig:
        config = StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=self.retention,
            max_age=self.max_age_s,
            duplicate_window=self.duplicate_window_s,
            storage=storage,
            num_replicas=replicas,
        )
        return (limits or self.limits).set_on(config)

    def jstream(self) -> JStream:
        """The FastStream handle for subscribers: never declares or changes the stream."""
        return JStream(name=self.name, declare=False)


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer of one service on one stream."""

    service: str
    purpose: str
    stream: str
    filter: Literal["lifecycle", "transcript", "events", "push", "sms", "dlq"]
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    # Server-side backoff replaces ack_wait for every delivery, so a handler slower than its
    # first step would be redelivered while still running; voicemesh retries with explicit
    # NAK delays instead (bus.DeadLetterMiddleware) and leaves this empty by default.
    backoff_s: tuple[float, ...] = field(default=())
    max_ack_pending: int = 256

    def filter_subject(self, tenant: str) -> str:
        builders = {
            "lifecycle": lambda: subjects.call_lifecycle(tenant, "*"),
            "transcript": lambda: subjects.call_transcript(tenant, "*"),
            "events": lambda: subjects.event(tenant, "*"),
            "push": lambda: subjects.push_voip(tenant),
            "sms": lambda: subjects.sms_outbound(tenant),
            "dlq": lambda: subjects.dead_letter(tenant),
        }
        return builders[self.filter]()

    def durable(self, tenant: str) -> str:
        return durable_name(self.service, self.purpose, tenant)

    def config(self, tenant: str) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable(tenant),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            backoff=list(self.backoff_s) or None,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subject(tenant),
        )


def durable_name(service: str, purpose: str, tenant: str) -> str:
    """``crm-calls`` for a process serving every tenant, ``crm-calls-acme`` for one tenant."""
    base = f"{service}-{purpose}"
    return base if tenant == "*" else f"{base}-{subjects.validate_token(tenant, 'tenant')}"


STREAMS: dict[str, StreamSpec] = {
    s.name: s
    for s in (
        StreamSpec(
            "CALLS",
            (subjects.call_lifecycle("*", "*"),),
            StreamLimits(1024 * MIB, max_msgs_per_subject=1_000),  # per call
            description="call lifecycle events",
        ),
        StreamSpec(
            "TRANSCRIPTS",
            (subjects.call_transcript("*", "*"),),
            StreamLimits(2048 * MIB, max_msgs_per_subject=10_000),  # per call
            max_age_s=30 * DAY,
            description="transcript segments",
        ),
        StreamSpec(
            "EVENTS",
            (subjects.event("*", "*"),),
            StreamLimits(2048 * MIB, max_msgs_per_subject=200_000),  # per tenant and type
            max_age_s=30 * DAY,
            description="tool, push and SMS outcome events",
        ),
        StreamSpec(
            "PUSH",
            (subjects.push_voip("*"),),
            # Per tenant: at most this many pending jobs; more are refused, not dropped.
            StreamLimits(256 * MIB, max_msgs_per_subject=10_000, discard_new_per_subject=True),
            retention=RetentionPolicy.WORK_QUEUE,
            max_age_s=3600.0,
            description="VoIP push jobs (work queue)",
        ),
        StreamSpec(
            "SMS",
            (subjects.sms_outbound("*"),),
            StreamLimits(512 * MIB, max_msgs_per_subject=50_000),  # per tenant
            description="outbound SMS jobs",
        ),
        StreamSpec(
            "DLQ",
            (subjects.dead_letter("*"),),
            StreamLimits(512 * MIB, max_msgs_per_subject=20_000),  # per tenant
            max_age_s=30 * DAY,
            description="messages that could not be handled, with the reason",
        ),
    )
}

CONSUMERS: tuple[ConsumerSpec, ...] = (
    ConsumerSpec("audit", "calls", "CALLS", "lifecycle"),
    ConsumerSpec("audit", "events", "EVENTS", "events"),
    ConsumerSpec("audit", "sms", "SMS", "sms"),
    # Never fetched from: its pending count is the tenant's DLQ depth (runtime/dlq.py).
    ConsumerSpec("audit", "dlq", "DLQ", "dlq", max_ack_pending=1),
    ConsumerSpec("transcript", "segments", "TRANSCRIPTS", "transcript"),
    ConsumerSpec("crm", "calls", "CALLS", "lifecycle"),
    ConsumerSpec("crm", "events", "EVENTS", "events"),
    ConsumerSpec("push", "calls", "CALLS", "lifecycle", ack_wait_s=15.0),
    ConsumerSpec("push", "jobs", "PUSH", "push", ack_wait_s=15.0),
    ConsumerSpec("sms", "jobs", "SMS", "sms"),
    ConsumerSpec("agent", "calls", "CALLS", "lifecycle", ack_wait_s=10.0),
)


def stream_for(subject: str) -> str | None:
    """The JetStream stream that stores ``subject``, or ``None`` for core-NATS subjects."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != subjects.ROOT:
        return None
    if parts[2] == "call" and len(parts) >= 5:
        return {"lifecycle": "CALLS", "transcript": "TRANSCRIPTS"}.get(parts[4])
    return {"event": "EVENTS", "push": "PUSH", "sms": "SMS", "dlq": "DLQ"}.get(parts[2])


def stream(name: str) -> StreamSpec:
    return STREAMS[name]


def consumer(service: str, purpose: str) -> ConsumerSpec:
    for spec in CONSUMERS:
        if spec.service == service and spec.purpose == purpose:
            return spec
    raise KeyError(f"no consumer {service}-{purpose} is defined")


@dataclass(frozen=True)
class ApplyResult:
    kind: Literal["stream", "consumer"]
    name: str
    action: Literal["created", "unchanged", "subjects_added", "limits_set"]


async def apply(
    js: JetStreamContext,
    *,
    tenants: list[str] | None = None,
    services: set[str] | None = None,
    storage: StorageType = StorageType.FILE,
    replicas: int = 1,
    limits: Mapping[str, StreamLimits] | None = None,
) -> list[ApplyResult]:
    """Create the streams and durable consumers that are missing, add missing subjects and
    set every stream's limits; change nothing else.

    ``tenants`` lists the tenants whose consumers to create (``["*"]``, the default, makes
    the all-tenant consumers the local stack uses); ``services`` limits which services'.
    ``limits`` (stream name -> limits, e.g. ``StreamSettings().limits()``) replaces the
    defaults of the streams it names.
    """
    unknown = set(limits or {}) - set(STREAMS)
    if unknown:
        raise ValueError(f"no such streams: {sorted(unknown)}")
    results: list[ApplyResult] = []
    for spec in STREAMS.values():
        wanted = (limits or {}).get(spec.name, spec.limits)
        results.append(await _apply_stream(js, spec, storage, replicas, wanted))
    for tenant in tenants or ["*"]:
        for cspec in CONSUMERS:
            if services is not None and cspec.service not in services:
                continue
            results.append(await _apply_consumer(js, cspec, tenant))
    return results


async def _apply_stream(
    js: JetStreamContext,
    spec: StreamSpec,
    storage: StorageType,
    replicas: int,
    limits: StreamLimits,
) -> ApplyResult:
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(spec.config(storage, replicas, limits))
        log.info("stream %s created", spec.name)
        return ApplyResult("stream", spec.name, "created")
    config = info.config
    existing = list(config.subjects or [])
    missing = [s for s in spec.subjects if s not in existing]
    relimit = limits.differs_from(config)
    if not missing and not relimit:
        return ApplyResult("stream", spec.name, "unchanged")
    # Keep every other setting the operator chose.
    config.subjects = existing + missing
    if relimit:
        limits.set_on(config)
    await js.update_stream(config)
    if missing:
        log.warning("stream %s: added subjects %s, other settings kept", spec.name, missing)
    if relimit:
        log.warning(
            "stream %s: limits set to max_bytes=%d max_msgs_per_subject=%d",
            spec.name,
            limits.max_bytes,
            limits.max_msgs_per_subject,
        )
        return ApplyResult("stream", spec.name, "limits_set")
    return ApplyResult("stream", spec.name, "subjects_added")


async def _apply_consumer(js: JetStreamContext, spec: ConsumerSpec, tenant: str) -> ApplyResult:
    durable = spec.durable(tenant)
    try:
        await js.consumer_info(spec.stream, durable)
    except NotFoundError:
        await js.add_consumer(spec.stream, spec.config(tenant))
        log.info("consumer %s on %s created", durable, spec.stream)
        return ApplyResult("consumer", durable, "created")
    return ApplyResult("consumer", durable, "unchanged")
