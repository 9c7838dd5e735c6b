"""voicemesh.common: what every voicemesh service shares, in two layers.

* ``voicemesh.common.contracts``: what travels between services. Wire events, subjects,
  streams and consumers, tool argument and result models, ids, the error tree, tenancy and
  the binary audio frame. Pure data and pure functions: no I/O.
* ``voicemesh.common.runtime``: how a service runs on the mesh. Settings and API keys, the
  one NATS ``connect()``, the delivery policy, the JetStream publisher, the service
  skeleton, telemetry, the tool server and client, databases.

A service imports only this package and its own code, never another service. Test helpers
live in the development-only ``voicemesh.testkit``; no production package imports it.
See docs/architecture.md.
"""

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.audio import AudioFrame, AudioFrameError, decode_frame, encode_frame
from voicemesh.common.contracts.errors import (
    Category,
    Conflict,
    DeadlineExceeded,
    InvalidMessage,
    MeshError,
    NotFound,
    PermanentError,
    TransientError,
    Unauthorized,
    UnavailableError,
    UnknownTenant,
    category_of,
)
from voicemesh.common.contracts.events import (
    AnyEvent,
    AppointmentChanged,
    CallAnswered,
    CallConnected,
    CallEnded,
    CallFailed,
    CallHandedOff,
    CallMissed,
    CallRequested,
    CallRinging,
    ControlCommand,
    ControlMessage,
    DeadLetter,
    EndReason,
    Envelope,
    FailureReason,
    HandoffReason,
    LifecycleEvent,
    PushJob,
    SmsJob,
    SmsStatus,
    Speaker,
    ToolError,
    ToolErrorCode,
    ToolEvent,
    ToolRequest,
    ToolResult,
    TranscriptSegment,
    decode_event,
    encode_event,
    event_types,
    new_call_id,
    new_event_id,
)
from voicemesh.common.contracts.ids import derived_id, message_id
from voicemesh.common.contracts.streams import (
    CONSUMERS,
    STREAMS,
    ConsumerSpec,
    StreamSpec,
    stream_for,
)
from voicemesh.common.contracts.tenancy import Tenant, TenantRegistry, Vertical
from voicemesh.common.runtime.bus import DeadLetterMiddleware, make_broker, subscribe_durable
from voicemesh.common.runtime.connection import connect
from voicemesh.common.runtime.delivery import Delivery
from voicemesh.common.runtime.publisher import JetStreamPublisher
from voicemesh.common.runtime.service import MeshService, run, serve, setup_process
from voicemesh.common.runtime.settings import NatsSettings, ServiceSettings
from voicemesh.common.runtime.telemetry import Telemetry, setup_telemetry

__all__ = [
    "CONSUMERS",
    "STREAMS",
    "AnyEvent",
    "AppointmentChanged",
    "AudioFrame",
    "AudioFrameError",
    "CallAnswered",
    "CallConnected",
    "CallEnded",
    "CallFailed",
    "CallHandedOff",
    "CallMissed",
    "CallRequested",
    "CallRinging",
    "Category",
    "Conflict",
    "ConsumerSpec",
    "ControlCommand",
    "ControlMessage",
    "DeadLetter",
    "DeadLetterMiddleware",
    "DeadlineExceeded",
    "Delivery",
    "EndReason",
    "Envelope",
    "FailureReason",
    "HandoffReason",
    "InvalidMessage",
    "JetStreamPublisher",
    "LifecycleEvent",
    "MeshError",
    "MeshService",
    "NatsSettings",
    "NotFound",
    "PermanentError",
    "PushJob",
    "ServiceSettings",
    "SmsJob",
    "SmsStatus",
    "Speaker",
    "StreamSpec",
    "Telemetry",
    "Tenant",
    "TenantRegistry",
    "ToolError",
    "ToolErrorCode",
    "ToolEvent",
    "ToolRequest",
    "ToolResult",
    "TranscriptSegment",
    "TransientError",
    "Unauthorized",
    "UnavailableError",
    "UnknownTenant",
    "Vertical",
    "category_of",
    "connect",
    "decode_event",
    "decode_frame",
    "derived_id",
    "encode_event",
    "encode_frame",
    "event_types",
    "make_broker",
    "message_id",
    "new_call_id",
    "new_event_id",
    "run",
    "serve",
    "setup_process",
    "setup_telemetry",
    "stream_for",
    "subjects",
    "subscribe_durable",
]
