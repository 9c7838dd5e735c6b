"""Every NATS subject voicemesh uses, built in one place.

Subjects start with ``vm.<tenant>`` so NATS permissions can fence a tenant in
(``vm.<tenant>.>``). No other module spells a subject: services call these builders.

Builders accept ``"*"`` for the tenant or call id to make a subscription pattern.
"""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = [
    "ANY",
    "ROOT",
    "SubjectError",
    "all_tenant_subjects",
    "audio_in",
    "audio_out",
    "call_control",
    "call_lifecycle",
    "call_transcript",
    "dead_letter",
    "event",
    "inbox_prefix",
    "low_cardinality",
    "parse_call_subject",
    "push_voip",
    "sms_outbound",
    "tenant_of",
    "tool",
    "validate_token",
]

ROOT: Final = "vm"
ANY: Final = "*"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

EventKind = Literal["tool", "push", "sms", "contact", "appointment", "handoff", "audit_head"]


class SubjectError(ValueError):
    """A value cannot be used as a subject token (empty, or contains '.', '*', '>' or spaces)."""


def validate_token(value: str, what: str = "token", *, wildcard: bool = False) -> str:
    """Return ``value`` if it is a safe single subject token."""
    if wildcard and value == ANY:
        return value
    if not _TOKEN.fullmatch(value):
        raise SubjectError(f"invalid {what} {value!r} for a subject token")
    return value


def _call(tenant: str, call_id: str, leaf: str) -> str:
    t = validate_token(tenant, "tenant", wildcard=True)
    c = validate_token(call_id, "call id", wildcard=True)
    return f"{ROOT}.{t}.call.{c}.{leaf}"


def call_lifecycle(tenant: str, call_id: str) -> str:
    """Call lifecycle events (JetStream stream CALLS)."""
    return _call(tenant, call_id, "lifecycle")


def audio_in(tenant: str, call_id: str) -> str:
    """Caller audio frames, gateway to agent (core NATS, raw nats-py)."""
    return _call(tenant, call_id, "audio.in")


def audio_out(tenant: str, call_id: str) -> str:
    """Agent audio frames, agent to gateway (core NATS, raw nats-py)."""
    return _call(tenant, call_id, "audio.out")


def call_control(tenant: str, call_id: str) -> str:
    """Interrupt (barge-in), hang-up and DTMF for one call (core NATS)."""
    return _call(tenant, call_id, "control")


def call_transcript(tenant: str, call_id: str) -> str:
    """Transcript segments of one call (JetStream stream TRANSCRIPTS)."""
    return _call(tenant, call_id, "transcript")


def tool(tenant: str, service: str, name: str) -> str:
    """Request/reply subject of one agent tool, e.g. ``vm.acme.tool.calendar.book``."""
    t = validate_token(tenant, "tenant", wildcard=True)
    s = validate_token(service, "service", wildcard=True)
    n = validate_token(name, "tool name", wildcard=True)
    return f"{ROOT}.{t}.tool.{s}.{n}"


def push_voip(tenant: str) -> str:
    """VoIP push jobs (JetStream work queue PUSH)."""
    return f"{ROOT}.{validate_token(tenant, 'tenant', wildcard=True)}.push.voip"


def sms_outbound(tenant: str) -> str:
    """Outbound SMS jobs (JetStream stream SMS)."""
    return f"{ROOT}.{validate_token(tenant, 'tenant', wildcard=True)}.sms.outbound"


def event(tenant: str, kind: EventKind | Literal["*"]) -> str:
    """Domain events that are not tied to a call subject: tool calls, push and SMS outcomes."""
    t = validate_token(tenant, "tenant", wildcard=True)
    return f"{ROOT}.{t}.event.{validate_token(kind, 'event kind', wildcard=True)}"


def dead_letter(tenant: str) -> str:
    """Messages a service could not handle, with the reason (JetStream stream DLQ)."""
    return f"{ROOT}.{validate_token(tenant, 'tenant', wildcard=True)}.dlq"


def all_tenant_subjects(tenant: str) -> str:
    """Everything one tenant may touch: the subject its NATS permissions are fenced to."""
    return f"{ROOT}.{validate_token(tenant, 'tenant')}.>"


def inbox_prefix(tenant: str) -> str:
    """The reply-inbox prefix of a process: ``_INBOX_<tenant>`` for one tenant, else ``_INBOX``.

    A per-tenant pod's NATS user may subscribe only to its own inboxes, so replies and
    JetStream acks meant for one tenant cannot be read by another.
    """
    return "_INBOX" if tenant == ANY else f"_INBOX_{validate_token(tenant, 'tenant')}"


def tenant_of(subject: str) -> str | None:
    """The tenant token of a voicemesh subject, or ``None`` if it is not one."""
    parts = subject.split(".")
    if len(parts) >= 3 and parts[0] == ROOT and _TOKEN.fullmatch(parts[1]):
        return parts[1]
    return None


def parse_call_subject(subject: str) -> tuple[str, str, str] | None:
    """Split ``vm.<tenant>.call.<call>.<leaf...>`` into (tenant, call id, leaf)."""
    parts = subject.split(".", 4)
    if len(parts) == 5 and parts[0] == ROOT and parts[2] == "call":
        return parts[1], parts[3], parts[4]
    return None


def low_cardinality(subject: str) -> str:
    """The subject with tenant, call id and inbox ids replaced by ``*``.

    Span names and metric labels use this form, so a busy system has a handful of
    operation names rather than one per call.
    """
    parts = subject.split(".")
    if (parts and parts[0] in {"_INBOX", "$JS"}) or subject.startswith("_INBOX"):
        return parts[0] + ".*"
    if len(parts) >= 2 and parts[0] == ROOT:
        parts[1] = ANY
        if len(parts) >= 4 and parts[2] == "call":
            parts[3] = ANY
    return ".".join(parts)
