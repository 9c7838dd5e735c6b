"""The wire contract: every event voicemesh publishes, as Pydantic v2 models.

Each event carries one envelope (``event_id``, ``occurred_at``, ``tenant``, ``call_id``,
``source``, ``schema_version``) and a ``type`` literal that names it on the wire.
``decode_event`` turns bytes into the right model or raises ``InvalidMessage``.

``AnyEvent`` is the registry: every event type any service publishes is in it, so
``decode_event`` reads anything on the bus and ``make docs`` exports every schema
(``tests/e2e`` checks the registry against the types seen during a call).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from voicemesh.common.contracts.errors import InvalidMessage, describe_validation_error
from voicemesh.common.contracts.ids import new_id
from voicemesh.common.contracts.tenancy import TENANT_ID_PATTERN

__all__ = [
    "CALL_ID_PATTERN",
    "SCHEMA_VERSION",
    "AnyEvent",
    "AppointmentChanged",
    "AuditHeadSigned",
    "CallAnswered",
    "CallConnected",
    "CallEnded",
    "CallFailed",
    "CallHandedOff",
    "CallMissed",
    "CallRequested",
    "CallRinging",
    "ControlCommand",
    "ControlMessage",
    "DeadLetter",
    "EndReason",
    "Envelope",
    "FailureReason",
    "HandoffReason",
    "LifecycleEvent",
    "PushJob",
    "SmsJob",
    "SmsStatus",
    "Speaker",
    "ToolError",
    "ToolErrorCode",
    "ToolEvent",
    "ToolRequest",
    "ToolResult",
    "TranscriptSegment",
    "decode_event",
    "encode_event",
    "event_models",
    "event_schemas",
    "event_types",
    "new_call_id",
    "new_event_id",
]

SCHEMA_VERSION = 1
CALL_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

TenantId = Annotated[str, Field(pattern=TENANT_ID_PATTERN)]
CallId = Annotated[str, Field(pattern=CALL_ID_PATTERN)]


def new_event_id() -> str:
    return new_id()


def new_call_id() -> str:
    return new_id()


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """Fields every event carries. ``event_id`` is also the JetStream dedup id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=new_event_id, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    occurred_at: datetime = Field(default_factory=_now)
    tenant: TenantId
    call_id: CallId | None = None
    source: str = Field(min_length=1, max_length=64)
    schema_version: int = SCHEMA_VERSION


# --- call lifecycle ------------------------------------------------------------------------


class EndReason(StrEnum):
    HANGUP = "hangup"
    AGENT_HANGUP = "agent_hangup"
    ICE_FAILED = "ice_failed"
    TIMEOUT = "timeout"
    MAX_DURATION = "max_duration"
    SERVER_SHUTDOWN = "server_shutdown"
    CANCELLED = "cancelled"
    ERROR = "error"


class FailureReason(StrEnum):
    NO_DEVICES = "no_devices"
    PUSH_REJECTED = "push_rejected"
    PUSH_UNAVAILABLE = "push_unavailable"
    INVALID_REQUEST = "invalid_request"
    CAPACITY = "capacity"
    ERROR = "error"


class _CallEvent(Envelope):
    call_id: CallId


class CallRequested(_CallEvent):
    """A tenant backend (or the agent) asks for an outbound call to a user."""

    type: Literal["call.requested"] = "call.requested"
    user_id: str = Field(min_length=1, max_length=128)
    caller_name: str = Field(default="", max_length=128)
    handle: str = Field(default="", max_length=128)
    ring_timeout_s: float = Field(default=30.0, gt=0, le=300)
    purpose: str = Field(default="", max_length=256)
    phone: str | None = Field(
        default=None,
        pattern=r"^\+[1-9][0-9]{6,14}$",
        description="E.164 number for the missed-call text; no text is sent without it",
    )


class CallRinging(_CallEvent):
    type: Literal["call.ringing"] = "call.ringing"
    devices: int = Field(ge=0)


class CallAnswered(_CallEvent):
    type: Literal["call.answered"] = "call.answered"


class CallConnected(_CallEvent):
    type: Literal["call.connected"] = "call.connected"
    direction: Literal["inbound", "outbound"] = "inbound"
    vertical: str | None = None
    phone: str | None = Field(
        default=None,
        pattern=r"^\+[1-9][0-9]{6,14}$",
        description="E.164 number the tenant backend vouched for when it created the call",
    )


class CallEnded(_CallEvent):
    type: Literal["call.ended"] = "call.ended"
    reason: EndReason
    duration_s: float = Field(default=0.0, ge=0)


class CallMissed(_CallEvent):
    type: Literal["call.missed"] = "call.missed"
    user_id: str = ""


class CallFailed(_CallEvent):
    type: Literal["call.failed"] = "call.failed"
    reason: FailureReason
    detail: str = Field(default="", max_length=512)


class HandoffReason(StrEnum):
    CALLER_ASKED = "caller_asked"
    CRISIS = "crisis"
    #: a medical emergency or a danger to someone's life: the caller was told to call 911
    EMERGENCY = "emergency"
    PROVIDER_FAILURE = "provider_failure"
    NOT_UNDERSTOOD = "not_understood"
    TOOL_FAILURE = "tool_failure"


class CallHandedOff(_CallEvent):
    """The agent handed the caller to a person (the tenant's staff call back or pick up)."""

    type: Literal["call.handed_off"] = "call.handed_off"
    reason: HandoffReason
    detail: str = Field(default="", max_length=512)


LifecycleEvent: TypeAlias = Annotated[
    CallRequested
    | CallRinging
    | CallAnswered
    | CallConnected
    | CallEnded
    | CallMissed
    | CallFailed
    | CallHandedOff,
    Field(discriminator="type"),
]

# --- transcript ----------------------------------------------------------------------------


class Speaker(StrEnum):
    CALLER = "caller"
    AGENT = "agent"


class TranscriptSegment(_CallEvent):
    """One utterance of one speaker; ``segment_id`` makes redelivery harmless."""

    type: Literal["transcript.segment"] = "transcript.segment"
    segment_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    speaker: Speaker
    text: str = Field(max_length=8192)
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    final: bool = True


# --- call control (core NATS) --------------------------------------------------------------


class ControlCommand(StrEnum):
    INTERRUPT = "interrupt"
    HANGUP = "hangup"
    DTMF = "dtmf"


class ControlMessage(_CallEvent):
    type: Literal["call.control"] = "call.control"
    command: ControlCommand
    digits: str = Field(default="", pattern=r"^[0-9*#A-D]{0,32}$")


# --- tools (request/reply) -----------------------------------------------------------------


class ToolErrorCode(StrEnum):
    NOT_FOUND = "not_found"
    SLOT_TAKEN = "slot_taken"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class ToolRequest(Envelope):
    """A tool call from the agent. ``arguments`` are validated by the tool's own model."""

    type: Literal["tool.request"] = "tool.request"
    service: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    arguments: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, max_length=128)


class ToolError(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: ToolErrorCode
    message: str = Field(max_length=1024)


class ToolResult(Envelope):
    """The answer to a ``ToolRequest``: either ``result`` or a typed ``error``."""

    type: Literal["tool.result"] = "tool.result"
    request_id: str
    ok: bool
    result: dict[str, Any] | None = None
    error: ToolError | None = None


class ToolEvent(Envelope):
    """A record that a tool was called, published after it ran (audit and CRM feed on it)."""

    type: Literal["tool.event"] = "tool.event"
    service: str
    name: str
    request_id: str
    ok: bool
    error_code: ToolErrorCode | None = None
    duration_ms: float = Field(ge=0)


# --- jobs ----------------------------------------------------------------------------------


class PushJob(Envelope):
    """Ring (or stop ringing) a user's devices for a call."""

    type: Literal["push.job"] = "push.job"
    call_id: CallId
    user_id: str = Field(min_length=1, max_length=128)
    kind: Literal["ring", "cancel"] = "ring"
    caller_name: str = Field(default="", max_length=128)
    handle: str = Field(default="", max_length=128)
    expires_at: datetime | None = None


class SmsJob(Envelope):
    """Send one text message; ``idempotency_key`` makes a retried job send once."""

    type: Literal["sms.job"] = "sms.job"
    idempotency_key: str = Field(min_length=1, max_length=128)
    to: str = Field(pattern=r"^\+[1-9][0-9]{6,14}$")
    body: str = Field(min_length=1, max_length=1600)
    purpose: str = Field(default="", max_length=64)


# --- domain events the tool services publish (``vm.<tenant>.event.<kind>``) ----------------


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


class AuditHeadSigned(Envelope):
    """A tenant's audit chain head, signed by the audit service (``vm.<tenant>.event.audit_head``):
    the hash the chain had at ``seq`` at ``signed_at`` (``voicemesh audit verify`` checks it)."""

    type: Literal["audit.head_signed"] = "audit.head_signed"
    seq: int = Field(ge=1)
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    signed_at: str
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(max_length=128, description="base64 Ed25519 over its statement")

    def name(self) -> str:
        """How a verifier names this head in what it reports."""
        return f"the head signed at {self.signed_at} (seq {self.seq}, key {self.key_id})"


# --- dead letters --------------------------------------------------------------------------


class DeadLetter(Envelope):
    """A message a service could not handle, kept with the reason so an operator can act."""

    type: Literal["dead_letter"] = "dead_letter"
    subject: str
    consumer: str
    reason: str = Field(max_length=2048)
    error_type: str
    deliveries: int = Field(ge=0, default=1)
    payload: str = Field(description="the original payload, UTF-8 with replacement, truncated")
    payload_truncated: bool = False


AnyEvent: TypeAlias = Annotated[
    CallRequested
    | CallRinging
    | CallAnswered
    | CallConnected
    | CallEnded
    | CallMissed
    | CallFailed
    | CallHandedOff
    | TranscriptSegment
    | ControlMessage
    | ToolRequest
    | ToolResult
    | ToolEvent
    | PushJob
    | SmsJob
    | AppointmentChanged
    | SmsStatus
    | AuditHeadSigned
    | DeadLetter,
    Field(discriminator="type"),
]

_ANY_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def encode_event(event: Envelope) -> bytes:
    return event.model_dump_json().encode()


def decode_event(data: bytes | str) -> AnyEvent:
    """Parse any voicemesh event, raising ``InvalidMessage`` with the reason on bad input."""
    try:
        return _ANY_EVENT.validate_json(data)
    except ValidationError as exc:
        raise InvalidMessage(describe_validation_error(exc)) from exc


def event_models() -> list[type[Envelope]]:
    """Every registered event model, in registry order."""
    (union, _discriminator) = get_args(AnyEvent)
    return list(get_args(union))


def event_types() -> set[str]:
    """The wire ``type`` of every registered event."""
    return {str(model.model_fields["type"].default) for model in event_models()}


def event_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every wire event, keyed by its ``type``."""
    return {
        str(model.model_fields["type"].default): model.model_json_schema()
        for model in event_models()
    }
