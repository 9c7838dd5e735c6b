"""The agent's tools over NATS request/reply: typed models, ``ToolServer`` and ``ToolClient``.

A tool is ``vm.<tenant>.tool.<service>.<name>``. The request body is a ``ToolRequest`` whose
``arguments`` are validated by the tool's own argument model (``TOOLS``); the reply is a
``ToolResult`` carrying either the tool's result model as a dict or a typed ``ToolError``.
A tool never answers with silence: bad arguments give ``invalid``, a slow handler gives
``timeout``, and a client that hears nothing in time gets a ``timeout`` result too.

Every call is traced (one ``tool <service>.<name>`` span, never arguments as attributes) and
recorded afterwards as a ``ToolEvent`` on ``vm.<tenant>.event.tool``. Those records (and a
tool service's own domain events, through ``ToolServer.publish_event``) are published to
JetStream without holding up the answer: acks are checked as they arrive, and a missing one is
logged, never lost silently.

This module also holds the two domain events the tool services publish besides
``ToolEvent``: ``AppointmentChanged`` (calendar) and ``SmsStatus`` (sms).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, get_current_span
from prometheus_client import Counter, Histogram
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from voicemesh.common import subjects
from voicemesh.common.bus import PUBLISH_TIMEOUT_S, stream_for
from voicemesh.common.errors import (
    DeadlineExceeded,
    InvalidMessage,
    MeshError,
    NotFound,
    TransientError,
    Unauthorized,
    UnknownTenant,
)
from voicemesh.common.events import (
    Envelope,
    ToolError,
    ToolErrorCode,
    ToolEvent,
    ToolRequest,
    ToolResult,
)
from voicemesh.common.telemetry import trace_context_from
from voicemesh.common.tenancy import Tenant, Vertical

if TYPE_CHECKING:
    from voicemesh.common.service import MeshService

__all__ = [
    "PHONE_PATTERN",
    "TOOLS",
    "AddNoteArgs",
    "AppointmentChanged",
    "AppointmentInfo",
    "AppointmentResult",
    "AppointmentsResult",
    "AvailabilityArgs",
    "AvailabilityResult",
    "BookArgs",
    "CancelArgs",
    "Claim",
    "ConflictCheckArgs",
    "ConflictCheckResult",
    "ConflictMatch",
    "ContactInfo",
    "ContactResult",
    "ContactsResult",
    "FileClaimArgs",
    "Interaction",
    "InteractionsResult",
    "ListAppointmentsArgs",
    "ListInteractionsArgs",
    "Listing",
    "ListingsResult",
    "LookupContactArgs",
    "LookupPolicyArgs",
    "NoteResult",
    "Policy",
    "RescheduleArgs",
    "SearchListingsArgs",
    "SendSmsArgs",
    "SendSmsResult",
    "Slot",
    "SmsStatus",
    "ToolArgs",
    "ToolCall",
    "ToolCallError",
    "ToolClient",
    "ToolFailure",
    "ToolOutput",
    "ToolServer",
    "ToolSpec",
    "UpsertContactArgs",
    "error_for",
    "job_event_id",
    "tool_spec",
]

log = logging.getLogger(__name__)

PHONE_PATTERN = r"^\+[1-9][0-9]{6,14}$"
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,63}$"
DEFAULT_TIMEOUT_S = 5.0
#: How much longer than the tool's own deadline a client waits, so the server's typed
#: ``timeout`` answer (not the client's guess) is what the caller sees.
CLIENT_GRACE_S = 1.0

Phone = Annotated[str, Field(pattern=PHONE_PATTERN)]
Email = Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=128)]


class ToolArgs(BaseModel):
    """Base of every tool's argument model: strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolOutput(BaseModel):
    """Base of every tool's result model."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- crm -----------------------------------------------------------------------------------


class ContactInfo(ToolOutput):
    contact_id: str
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    created_at: datetime
    updated_at: datetime


class LookupContactArgs(ToolArgs):
    phone: Phone | None = None
    email: Email | None = None
    name: Name | None = None

    @model_validator(mode="after")
    def _one_key(self) -> LookupContactArgs:
        if not (self.phone or self.email or self.name):
            raise ValueError("give a phone, an email or a name")
        return self


class ContactsResult(ToolOutput):
    contacts: list[ContactInfo]


class UpsertContactArgs(ToolArgs):
    contact_id: Id | None = None
    name: Name | None = None
    phone: Phone | None = None
    email: Email | None = None

    @model_validator(mode="after")
    def _identified(self) -> UpsertContactArgs:
        if not (self.contact_id or self.phone or self.email):
            raise ValueError("give a contact_id, a phone or an email")
        return self


class ContactResult(ToolOutput):
    contact: ContactInfo
    created: bool


class AddNoteArgs(ToolArgs):
    contact_id: Id
    text: str = Field(min_length=1, max_length=4000)


class NoteResult(ToolOutput):
    note_id: str
    contact_id: str
    created_at: datetime


class ListInteractionsArgs(ToolArgs):
    contact_id: Id
    limit: int = Field(default=20, ge=1, le=200)


class Interaction(ToolOutput):
    kind: Literal["call", "appointment", "sms", "note"]
    occurred_at: datetime
    summary: str
    call_id: str | None = None


class InteractionsResult(ToolOutput):
    interactions: list[Interaction]


class SearchListingsArgs(ToolArgs):
    city: str | None = Field(default=None, max_length=64)
    min_price: int | None = Field(default=None, ge=0)
    max_price: int | None = Field(default=None, ge=0)
    min_beds: int | None = Field(default=None, ge=0, le=20)
    min_baths: float | None = Field(default=None, ge=0, le=20)
    status: Literal["active", "pending", "sold", "any"] = "active"
    limit: int = Field(default=5, ge=1, le=50)


class Listing(ToolOutput):
    listing_id: str
    address: str
    city: str
    price: int
    beds: int
    baths: float
    status: str


class ListingsResult(ToolOutput):
    listings: list[Listing]


class ConflictCheckArgs(ToolArgs):
    parties: list[Name] = Field(min_length=1, max_length=20)


class ConflictMatch(ToolOutput):
    party: str
    matter_id: str
    matter: str
    role: Literal["client", "adverse"]


class ConflictCheckResult(ToolOutput):
    clear: bool
    matches: list[ConflictMatch]


class LookupPolicyArgs(ToolArgs):
    policy_number: str | None = Field(default=None, pattern=r"^[A-Z0-9-]{4,32}$")
    phone: Phone | None = None

    @model_validator(mode="after")
    def _one_key(self) -> LookupPolicyArgs:
        if not (self.policy_number or self.phone):
            raise ValueError("give a policy_number or a phone")
        return self


class Policy(ToolOutput):
    policy_number: str
    holder_name: str
    kind: str
    status: str
    deductible: int


class FileClaimArgs(ToolArgs):
    policy_number: str = Field(pattern=r"^[A-Z0-9-]{4,32}$")
    incident_date: date
    description: str = Field(min_length=1, max_length=2000)
    idempotency_key: IdempotencyKey | None = None


class Claim(ToolOutput):
    claim_id: str
    policy_number: str
    incident_date: date
    status: str
    filed_at: datetime


# --- calendar ------------------------------------------------------------------------------


class AvailabilityArgs(ToolArgs):
    day: date
    days: int = Field(default=1, ge=1, le=14)


class Slot(ToolOutput):
    start: datetime
    end: datetime


class AvailabilityResult(ToolOutput):
    time_zone: str
    slot_minutes: int
    slots: list[Slot]


class BookArgs(ToolArgs):
    start: AwareDatetime
    name: Name
    phone: Phone | None = None
    contact_id: Id | None = None
    listing_id: Id | None = None
    notes: str = Field(default="", max_length=1000)
    idempotency_key: IdempotencyKey


class AppointmentInfo(ToolOutput):
    appointment_id: str
    start: datetime
    end: datetime
    name: str
    phone: str | None = None
    contact_id: str | None = None
    listing_id: str | None = None
    status: Literal["booked", "cancelled"]


class AppointmentResult(ToolOutput):
    appointment: AppointmentInfo
    created: bool = False


class RescheduleArgs(ToolArgs):
    appointment_id: Id
    start: AwareDatetime


class CancelArgs(ToolArgs):
    appointment_id: Id


class ListAppointmentsArgs(ToolArgs):
    day: date | None = None
    days: int = Field(default=7, ge=1, le=62)
    phone: Phone | None = None
    include_cancelled: bool = False


class AppointmentsResult(ToolOutput):
    appointments: list[AppointmentInfo]


# --- sms -----------------------------------------------------------------------------------


class SendSmsArgs(ToolArgs):
    to: Phone
    body: str = Field(min_length=1, max_length=1600)
    purpose: str = Field(default="agent", max_length=64)
    idempotency_key: IdempotencyKey


class SendSmsResult(ToolOutput):
    idempotency_key: str
    queued: bool


# --- the catalogue -------------------------------------------------------------------------

A = TypeVar("A", bound=ToolArgs)
R = TypeVar("R", bound=ToolOutput)


@dataclass(frozen=True)
class ToolSpec(Generic[A, R]):
    """One tool: where it lives, what it takes, what it returns and how long it may take."""

    service: str
    name: str
    arguments: type[A]
    result: type[R]
    timeout_s: float = DEFAULT_TIMEOUT_S
    verticals: frozenset[Vertical] | None = None
    description: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.name)

    def subject(self, tenant: str) -> str:
        return subjects.tool(tenant, self.service, self.name)


_ALL_TOOLS: tuple[ToolSpec[Any, Any], ...] = (
    ToolSpec("crm", "lookup_contact", LookupContactArgs, ContactsResult, 2.0,
             description="find contacts by phone, email or name"),
    ToolSpec("crm", "upsert_contact", UpsertContactArgs, ContactResult, 3.0,
             description="create a contact or update the one with this id, phone or email"),
    ToolSpec("crm", "add_note", AddNoteArgs, NoteResult, 3.0,
             description="add a note to a contact"),
    ToolSpec("crm", "list_interactions", ListInteractionsArgs, InteractionsResult, 3.0,
             description="a contact's calls, appointments, texts and notes, newest first"),
    ToolSpec("crm", "search_listings", SearchListingsArgs, ListingsResult, 3.0,
             frozenset({Vertical.REAL_ESTATE}), "search property listings"),
    ToolSpec("crm", "conflict_check", ConflictCheckArgs, ConflictCheckResult, 3.0,
             frozenset({Vertical.LEGAL}), "check parties against existing matters"),
    ToolSpec("crm", "lookup_policy", LookupPolicyArgs, Policy, 2.0,
             frozenset({Vertical.INSURANCE}), "find a policy by number or holder phone"),
    ToolSpec("crm", "file_claim", FileClaimArgs, Claim, 3.0,
             frozenset({Vertical.INSURANCE}), "file a claim against a policy"),
    ToolSpec("calendar", "availability", AvailabilityArgs, AvailabilityResult, 3.0,
             description="free slots for a day or a range of days"),
    ToolSpec("calendar", "book", BookArgs, AppointmentResult, 5.0,
             description="book a slot; the idempotency key makes a retry book once"),
    ToolSpec("calendar", "reschedule", RescheduleArgs, AppointmentResult, 5.0,
             description="move an appointment to another free slot"),
    ToolSpec("calendar", "cancel", CancelArgs, AppointmentResult, 3.0,
             description="cancel an appointment and free its slot"),
    ToolSpec("calendar", "list_appointments", ListAppointmentsArgs, AppointmentsResult, 3.0,
             description="appointments in a range of days, optionally for one phone"),
    ToolSpec("sms", "send", SendSmsArgs, SendSmsResult, 3.0,
             description="queue a text message (sent once per idempotency key)"),
)  # fmt: skip

TOOLS: dict[tuple[str, str], ToolSpec[Any, Any]] = {spec.key: spec for spec in _ALL_TOOLS}


def tool_spec(service: str, name: str) -> ToolSpec[Any, Any]:
    try:
        return TOOLS[(service, name)]
    except KeyError:
        raise KeyError(f"no tool {service}.{name} is defined") from None


# --- events the tool services publish ------------------------------------------------------


class AppointmentChanged(Envelope):
    """An appointment was booked, moved or cancelled (``vm.<tenant>.event.appointment``)."""

    type: Literal["appointment.changed"] = "appointment.changed"
    appointment_id: str
    change: Literal["booked", "rescheduled", "cancelled"]
    start: datetime
    phone: str | None = None
    contact_id: str | None = None


class SmsStatus(Envelope):
    """What became of an SMS job (``vm.<tenant>.event.sms``)."""

    type: Literal["sms.status"] = "sms.status"
    idempotency_key: str
    status: Literal["sent", "delivered", "failed", "opted_out", "undelivered"]
    to: str
    provider: str
    provider_id: str | None = None
    detail: str = Field(default="", max_length=512)


def job_event_id(tenant: str, idempotency_key: str) -> str:
    """A stable event id for a job, so JetStream drops a re-published duplicate."""
    return hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()[:40]


# --- errors --------------------------------------------------------------------------------


class ToolFailure(MeshError):
    """A tool refusing a call with a specific code (``slot_taken``, ``forbidden`` …)."""

    def __init__(self, code: ToolErrorCode, message: str) -> None:
        super().__init__(message)
        self.tool_code = code
        self.code = code.value


class ToolCallError(MeshError):
    """``ToolClient.call_typed`` got an error result; ``error`` says which."""

    def __init__(self, error: ToolError) -> None:
        super().__init__(f"{error.code.value}: {error.message}")
        self.error = error


def error_for(exc: BaseException) -> ToolError:
    """The typed error a caller sees for ``exc``; internals are never described."""
    if isinstance(exc, ToolFailure):
        return ToolError(code=exc.tool_code, message=_short(exc))
    if isinstance(exc, ValidationError):
        return ToolError(code=ToolErrorCode.INVALID, message=_validation_message(exc))
    if isinstance(exc, TimeoutError | DeadlineExceeded):
        return ToolError(code=ToolErrorCode.TIMEOUT, message=_short(exc) or "timed out")
    if isinstance(exc, InvalidMessage):
        return ToolError(code=ToolErrorCode.INVALID, message=_short(exc))
    if isinstance(exc, NotFound):
        return ToolError(code=ToolErrorCode.NOT_FOUND, message=_short(exc))
    if isinstance(exc, Unauthorized | UnknownTenant):
        return ToolError(code=ToolErrorCode.FORBIDDEN, message=_short(exc))
    if isinstance(exc, TransientError):
        return ToolError(code=ToolErrorCode.UNAVAILABLE, message=_short(exc))
    if isinstance(exc, MeshError) and exc.code in ToolErrorCode.__members__.values():
        return ToolError(code=ToolErrorCode(exc.code), message=_short(exc))
    return ToolError(code=ToolErrorCode.INTERNAL, message="internal error")


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:1024]


def _validation_message(exc: ValidationError) -> str:
    # Field paths and messages only: argument values may be PHI and never echo back.
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:5]]
    return "; ".join(parts)[:1024]


# --- server --------------------------------------------------------------------------------


class _EventSender:
    """Publishes events to JetStream and checks their acks as they come: many in flight.

    Awaiting each ack, going through FastStream's publish path, or even nats-py's
    ``publish_async`` (a random token, a future, a timer and two callbacks per message) cost
    more CPU per tool call than the tool itself. Here each event is a plain publish whose
    reply subject (``<inbox>.<n>``, under the connection's own inbox prefix) is watched by one
    subscription; the ack's arrival just forgets the entry. A refusal (no stream, an API
    error) is logged with the event's type, never its content; entries with no ack after
    ``timeout`` are found on the next send (they are kept in send order) and logged too, so a
    lost record is never silent. ``drain`` waits for what is outstanding on shutdown.
    """

    def __init__(self, *, timeout: float = PUBLISH_TIMEOUT_S, max_pending: int = 10_000) -> None:
        self._timeout = timeout
        self._max_pending = max_pending
        self._nc: NatsClient | None = None
        self._subscription: Subscription | None = None
        self._inbox = ""
        self._sent = 0
        # token -> (deadline, event type); insertion order is send order, so deadlines rise.
        self._pending: dict[str, tuple[float, str]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    async def open(self, connection: NatsClient) -> None:
        if self._subscription is not None:
            return
        self._nc = connection
        self._inbox = connection.new_inbox()
        self._subscription = await connection.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def send(self, event: Envelope, subject: str) -> None:
        """Publish ``event`` with the current trace context; raises if it cannot even be sent."""
        if self._nc is None:
            raise RuntimeError("the event sender is not open")
        now = time.monotonic()
        self._expire(now)
        kind = str(getattr(event, "type", type(event).__name__))
        if len(self._pending) >= self._max_pending:
            raise TransientError(f"{len(self._pending)} events are waiting for JetStream acks")
        headers = {MSG_ID: event.event_id}
        if stream := stream_for(subject):
            headers[EXPECTED_STREAM] = stream
        _add_trace_context(headers)
        self._sent += 1
        token = str(self._sent)
        self._pending[token] = (now + self._timeout, kind)
        self._idle.clear()
        try:
            await self._nc.publish(
                subject,
                event.model_dump_json().encode(),
                reply=f"{self._inbox}.{token}",
                headers=headers,
            )
        except BaseException:
            self._forget(token)
            raise

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        entry = self._forget(token)
        if entry is None:
            return  # already given up on as unacknowledged
        if msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
            log.warning("JetStream refused the %s event: no stream takes its subject", entry[1])
        elif b'"error"' in msg.data:
            log.warning("JetStream refused the %s event: %s", entry[1], _api_error(msg.data))

    def _forget(self, token: str) -> tuple[float, str] | None:
        entry = self._pending.pop(token, None)
        if not self._pending:
            self._idle.set()
        return entry

    def _expire(self, now: float) -> None:
        late: dict[str, int] = {}
        while self._pending:
            token, (deadline, kind) = next(iter(self._pending.items()))
            if deadline > now:
                break
            self._forget(token)
            late[kind] = late.get(kind, 0) + 1
        for kind, count in late.items():
            log.warning("no JetStream ack for %d %s event(s) in %gs", count, kind, self._timeout)

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the acks still outstanding, then stop; idempotent."""
        if self._subscription is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        self._expire(float("inf"))
        subscription, self._subscription = self._subscription, None
        with contextlib.suppress(Exception):  # a closed connection has nothing to undo
            await subscription.unsubscribe()


MSG_ID = "Nats-Msg-Id"
EXPECTED_STREAM = "Nats-Expected-Stream"
STATUS = "Status"
NO_RESPONDERS = "503"


def _add_trace_context(headers: dict[str, str]) -> None:
    # The W3C headers written directly: the global propagator's ``inject`` cost more than
    # the publish itself. voicemesh carries no baggage.
    context = get_current_span().get_span_context()
    if context.is_valid:
        flags = int(context.trace_flags)
        headers["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
        if context.trace_state:
            headers["tracestate"] = context.trace_state.to_header()


def _api_error(data: bytes) -> str:
    try:
        error = json.loads(data).get("error", {})
        return f"{error.get('code', '?')} {error.get('description', '')}".strip()[:200]
    except (ValueError, AttributeError):
        return "unreadable reply"


@dataclass(frozen=True)
class ToolCall:
    """What a tool handler knows about the call besides its arguments."""

    tenant: Tenant
    request: ToolRequest

    @property
    def call_id(self) -> str | None:
        return self.request.call_id


ToolHandler = Callable[[ToolCall, A], Awaitable[R]]


class ToolServer:
    """Serves one service's tools on ``vm.<tenant>.tool.<service>.*``.

    One core-NATS subscription per process in the queue group ``<service>-tools``, so
    replicas share the load; up to ``max_workers`` calls run at once. Each call is validated,
    run under its tool's deadline, answered, then recorded as a ``ToolEvent``.

    The subscription is raw nats-py on the service broker's connection, not a FastStream
    subscriber: a request/reply hop must always answer, and the broker's middlewares
    (dead-lettering, tenant fencing) would drop a bad request silently. It also skips
    FastStream's per-message overhead, the larger part of a tool's round trip. Trace context
    is taken from the request headers; metrics are ``voicemesh_tool_*``. The ``ToolEvent``
    that records a call, and the events a handler hands to ``publish_event``, go to
    JetStream without waiting for the ack on the call's path (see ``_EventSender``).
    """

    def __init__(self, service: MeshService, *, max_workers: int = 32) -> None:
        self._service = service
        self._name = service.name
        self._handlers: dict[str, tuple[ToolSpec[Any, Any], ToolHandler[Any, Any]]] = {}
        self._subject = subjects.tool(service.settings.tenant, service.name, "*")
        self._queue = f"{service.name}-tools"
        self._slots = asyncio.Semaphore(max_workers)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None
        self._events = _EventSender()
        # Looked up once: ``Telemetry.tracer`` asks the provider for a new tracer each time.
        self._tracer: Tracer = service.telemetry.tracer
        registry = service.telemetry.registry
        self._calls = Counter(
            "voicemesh_tool_calls",
            "Tool calls served, by tool and outcome (ok or the error code)",
            ["tool", "outcome"],
            registry=registry,
        )
        self._latency = Histogram(
            "voicemesh_tool_duration_seconds",
            "Time from request to answer, by tool",
            ["tool"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

        async def start() -> None:
            await self.start()

        async def stop() -> None:
            await self.stop()

        # After the broker connects (its connection carries the subscription), and before it
        # drains on shutdown (in-flight calls still need it to answer and record).
        service.faststream.after_startup(start)
        service.faststream.on_shutdown(stop)

    def tool(self, spec: ToolSpec[A, R]) -> Callable[[ToolHandler[A, R]], ToolHandler[A, R]]:
        """Decorator: serve ``spec`` with the decorated handler."""

        def register(handler: ToolHandler[A, R]) -> ToolHandler[A, R]:
            self.register(spec, handler)
            return handler

        return register

    def register(self, spec: ToolSpec[A, R], handler: ToolHandler[A, R]) -> None:
        if spec.service != self._name:
            raise ValueError(f"tool {spec.service}.{spec.name} does not belong to {self._name}")
        self._handlers[spec.name] = (spec, handler)

    @property
    def tools(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def in_flight(self) -> int:
        """Calls being served right now."""
        return len(self._in_flight)

    async def start(self) -> None:
        if self._subscription is not None:
            return
        connection: NatsClient = self._service.broker.connection
        await self._events.open(connection)
        self._subscription = await connection.subscribe(
            self._subject, queue=self._queue, cb=self._on_message
        )
        # Until the server has the subscription a request gets "no responders": the service
        # is not ready before this round trip.
        await connection.flush()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking calls, let queued ones run, wait for in-flight ones; idempotent."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):  # a closed connection has nothing to drain
                await subscription.drain()  # type: ignore[no-untyped-call]  # nats-py lacks hints
        if self._in_flight:
            wait = timeout if timeout is not None else self._service.settings.graceful_timeout
            _done, pending = await asyncio.wait(set(self._in_flight), timeout=wait)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._events.drain(self._service.settings.graceful_timeout)

    async def publish_event(self, event: Envelope, subject: str) -> None:
        """Publish a handler's domain event to JetStream without waiting for its ack.

        For events that follow a committed change (an appointment booked): the answer to the
        caller is not held up by JetStream, the event keeps its place in this connection's
        order, and a refusal or a missing ack is logged. Deduplicated by ``event_id``.
        """
        await self._events.send(event, subject)

    async def _on_message(self, msg: Msg) -> None:
        # nats-py delivers one message at a time per subscription; waiting for a free slot
        # here is the backpressure that bounds concurrent calls.
        await self._slots.acquire()
        task = asyncio.create_task(self._serve(msg), name=f"tool {self._name}")
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("tool task failed: %r", task.exception())

    async def _serve(self, raw: Msg) -> None:
        started = time.perf_counter()
        name = raw.subject.rsplit(".", 1)[-1]
        label = name if name in self._handlers else "unknown"
        tenant_id = subjects.tenant_of(raw.subject) or "unknown"
        request: ToolRequest | None = None
        with self._tracer.start_as_current_span(
            f"tool {self._name}.{label}",
            context=trace_context_from(raw.headers),
            kind=SpanKind.SERVER,
            attributes={"tool.service": self._name, "tool.name": label, "tenant": tenant_id},
        ) as span:
            try:
                request = ToolRequest.model_validate_json(raw.data)
                output = await self._dispatch(tenant_id, name, request)
                result = ToolResult(
                    tenant=tenant_id,
                    call_id=request.call_id,
                    source=self._name,
                    request_id=request.event_id,
                    ok=True,
                    result=output.model_dump(mode="json"),
                )
            except Exception as exc:
                error = error_for(exc)
                if error.code is ToolErrorCode.INTERNAL:
                    log.exception("tool %s.%s failed unexpectedly", self._name, label)
                result = ToolResult(
                    tenant=tenant_id,
                    call_id=request.call_id if request else None,
                    source=self._name,
                    request_id=request.event_id if request else "",
                    ok=False,
                    error=error,
                )
                span.set_attribute("tool.error_code", error.code.value)
                span.set_status(Status(StatusCode.ERROR, error.code.value))
            span.set_attribute("tool.ok", result.ok)
            if raw.reply:
                await raw.respond(result.model_dump_json().encode())
            outcome = "ok" if result.error is None else result.error.code.value
            self._calls.labels(label, outcome).inc()
            self._latency.labels(label).observe(time.perf_counter() - started)
            if request is not None and tenant_id in self._service.tenants:
                # Inside the span: the record carries the call's trace context.
                await self._record(request, result, started)

    async def _dispatch(self, tenant_id: str, name: str, request: ToolRequest) -> ToolOutput:
        tenant = self._service.tenants.get(tenant_id)
        if tenant is None:
            raise ToolFailure(ToolErrorCode.FORBIDDEN, f"tenant {tenant_id!r} is not served here")
        if request.tenant != tenant_id:
            raise ToolFailure(ToolErrorCode.FORBIDDEN, "the request's tenant is not the subject's")
        if request.service != self._name or request.name != name:
            raise ToolFailure(ToolErrorCode.INVALID, "the request names another tool")
        entry = self._handlers.get(name)
        if entry is None:
            raise ToolFailure(ToolErrorCode.INVALID, f"no tool {self._name}.{name}")
        spec, handler = entry
        if spec.verticals is not None and tenant.vertical not in spec.verticals:
            raise ToolFailure(
                ToolErrorCode.FORBIDDEN, f"{name} is not offered to {tenant.vertical.value} tenants"
            )
        arguments = dict(request.arguments)
        if (
            request.idempotency_key
            and "idempotency_key" in spec.arguments.model_fields
            and "idempotency_key" not in arguments
        ):
            arguments["idempotency_key"] = request.idempotency_key
        args = spec.arguments.model_validate(arguments)
        try:
            async with asyncio.timeout(spec.timeout_s):
                output: ToolOutput = await handler(ToolCall(tenant, request), args)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"{name} took longer than {spec.timeout_s:g}s") from exc
        expected: type[ToolOutput] = spec.result
        if not isinstance(output, expected):
            raise TypeError(f"{name} returned {type(output).__name__}, not {expected.__name__}")
        return output

    async def _record(self, request: ToolRequest, result: ToolResult, started: float) -> None:
        event = ToolEvent(
            tenant=result.tenant,
            call_id=request.call_id,
            source=self._name,
            service=request.service,
            name=request.name,
            request_id=request.event_id,
            ok=result.ok,
            error_code=result.error.code if result.error else None,
            duration_ms=(time.perf_counter() - started) * 1000,
        )
        try:
            await self._events.send(event, subjects.event(result.tenant, "tool"))
        except Exception as exc:
            # The caller already has its answer; losing the record is logged, not fatal.
            log.warning("could not record tool event for %s: %s", request.name, type(exc).__name__)


# --- client --------------------------------------------------------------------------------


class ToolClient:
    """Calls tools over NATS; every outcome, including silence, is a ``ToolResult``."""

    def __init__(
        self,
        connection: NatsClient | NatsBroker,
        *,
        source: str,
        tracer: Tracer | None = None,
    ) -> None:
        self._connection = connection
        self._source = source
        self._tracer = tracer

    def _nats(self) -> NatsClient:
        if isinstance(self._connection, NatsBroker):
            return self._connection.connection
        return self._connection

    async def call(
        self,
        tenant: str,
        service: str,
        name: str,
        arguments: Mapping[str, Any] | ToolArgs,
        *,
        call_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> ToolResult:
        spec = TOOLS.get((service, name))
        if timeout is None:
            timeout = (spec.timeout_s if spec else DEFAULT_TIMEOUT_S) + CLIENT_GRACE_S
        if isinstance(arguments, ToolArgs):
            args = arguments.model_dump(mode="json", exclude_none=True)
        else:
            args = dict(arguments)
        request = ToolRequest(
            tenant=tenant,
            call_id=call_id,
            source=self._source,
            service=service,
            name=name,
            arguments=args,
            idempotency_key=idempotency_key,
        )
        if self._tracer is None:
            return await self._send(request, timeout)
        with self._tracer.start_as_current_span(
            f"tool.call {service}.{name}",
            kind=SpanKind.CLIENT,
            attributes={"tool.service": service, "tool.name": name, "tenant": tenant},
        ) as span:
            result = await self._send(request, timeout)
            span.set_attribute("tool.ok", result.ok)
            if result.error:
                span.set_attribute("tool.error_code", result.error.code.value)
                span.set_status(Status(StatusCode.ERROR, result.error.code.value))
            return result

    async def call_typed(
        self,
        tenant: str,
        spec: ToolSpec[A, R],
        arguments: A,
        *,
        call_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> R:
        """Call ``spec`` and return its typed result, or raise ``ToolCallError``."""
        result = await self.call(
            tenant,
            spec.service,
            spec.name,
            arguments,
            call_id=call_id,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        if not result.ok or result.result is None:
            raise ToolCallError(
                result.error or ToolError(code=ToolErrorCode.INTERNAL, message="empty result")
            )
        return spec.result.model_validate(result.result)

    async def _send(self, request: ToolRequest, timeout: float) -> ToolResult:
        subject = subjects.tool(request.tenant, request.service, request.name)
        headers: dict[str, str] = {}
        _add_trace_context(headers)
        try:
            reply = await self._nats().request(
                subject,
                request.model_dump_json().encode(),
                timeout=timeout,
                headers=headers or None,
            )
        except (NatsTimeoutError, TimeoutError):
            return self._failed(request, ToolErrorCode.TIMEOUT, f"no answer in {timeout:g}s")
        except NoRespondersError:
            return self._failed(
                request, ToolErrorCode.UNAVAILABLE, f"no {request.service} service is serving"
            )
        try:
            return ToolResult.model_validate_json(reply.data)
        except ValidationError:
            return self._failed(request, ToolErrorCode.INTERNAL, "the tool's reply is malformed")

    def _failed(self, request: ToolRequest, code: ToolErrorCode, message: str) -> ToolResult:
        return ToolResult(
            tenant=request.tenant,
            call_id=request.call_id,
            source=self._source,
            request_id=request.event_id,
            ok=False,
            error=ToolError(code=code, message=message),
        )
