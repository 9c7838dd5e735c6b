"""The catalogue: every tool, where it lives, what it takes and returns, how long it may take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import ToolErrorCode, ToolRequest
from voicemesh.common.contracts.tenancy import Vertical
from voicemesh.common.contracts.tools import calendar, crm, sms
from voicemesh.common.contracts.tools.base import ToolArgs, ToolOutput
from voicemesh.common.contracts.tools.errors import ToolFailure

__all__ = ["DEFAULT_TIMEOUT_S", "TOOLS", "ToolSpec", "tool_spec"]

DEFAULT_TIMEOUT_S = 5.0

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
    #: arguments a request made on a call may not carry: the service takes them from the
    #: call (its verified number, its templates), never from the model; nor are they offered
    #: to one
    call_bound: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.name)

    def subject(self, tenant: str) -> str:
        return subjects.tool(tenant, self.service, self.name)

    def arguments_of(self, request: ToolRequest) -> A:
        """The request's arguments, validated; ``forbidden`` if a call's request sets one
        that is bound to the call. The request's idempotency key fills a missing one."""
        arguments = dict(request.arguments)
        if request.call_id is not None:
            bound = sorted(self.call_bound & arguments.keys())
            if bound:
                raise ToolFailure(
                    ToolErrorCode.FORBIDDEN,
                    f"{', '.join(bound)} cannot be set on a call: the call decides",
                )
        if request.idempotency_key and "idempotency_key" in self.arguments.model_fields:
            arguments.setdefault("idempotency_key", request.idempotency_key)
        return self.arguments.model_validate(arguments)


_ALL_TOOLS: tuple[ToolSpec[Any, Any], ...] = (
    ToolSpec("crm", "lookup_contact", crm.LookupContactArgs, crm.ContactsResult, 2.0,
             description="find contacts by phone, email or name"),
    ToolSpec("crm", "upsert_contact", crm.UpsertContactArgs, crm.ContactResult, 3.0,
             description="create or update the caller's contact (never another's)"),
    ToolSpec("crm", "caller", crm.CallerArgs, crm.CallerResult, 2.0,
             description="the call's contact and verified number"),
    ToolSpec("crm", "add_note", crm.AddNoteArgs, crm.NoteResult, 3.0,
             description="add a note to a contact"),
    ToolSpec("crm", "list_interactions", crm.ListInteractionsArgs, crm.InteractionsResult, 3.0,
             description="a contact's calls, appointments, texts and notes, newest first"),
    ToolSpec("crm", "search_listings", crm.SearchListingsArgs, crm.ListingsResult, 3.0,
             frozenset({Vertical.REAL_ESTATE}), "search property listings"),
    ToolSpec("crm", "conflict_check", crm.ConflictCheckArgs, crm.ConflictCheckResult, 3.0,
             frozenset({Vertical.LEGAL}), "check parties against existing matters"),
    ToolSpec("crm", "lookup_policy", crm.LookupPolicyArgs, crm.Policy, 2.0,
             frozenset({Vertical.INSURANCE}), "find a policy by number or holder phone"),
    ToolSpec("crm", "file_claim", crm.FileClaimArgs, crm.Claim, 3.0,
             frozenset({Vertical.INSURANCE}), "file a claim against a policy"),
    ToolSpec("calendar", "availability",
             calendar.AvailabilityArgs, calendar.AvailabilityResult, 3.0,
             description="free slots for a day or a range of days"),
    ToolSpec("calendar", "book", calendar.BookArgs, calendar.AppointmentResult, 5.0,
             description="book a slot; the idempotency key makes a retry book once"),
    ToolSpec("calendar", "reschedule", calendar.RescheduleArgs, calendar.AppointmentResult, 5.0,
             description="move an appointment to another free slot"),
    ToolSpec("calendar", "cancel", calendar.CancelArgs, calendar.AppointmentResult, 3.0,
             description="cancel an appointment and free its slot"),
    ToolSpec("calendar", "list_appointments",
             calendar.ListAppointmentsArgs, calendar.AppointmentsResult, 3.0,
             description="appointments in a range of days, optionally for one phone"),
    ToolSpec("sms", "send", sms.SendSmsArgs, sms.SendSmsResult, 3.0,
             description="text the caller one of the business's templates (sent once)",
             call_bound=frozenset({"to", "body"})),
)  # fmt: skip

TOOLS: dict[tuple[str, str], ToolSpec[Any, Any]] = {spec.key: spec for spec in _ALL_TOOLS}


def tool_spec(service: str, name: str) -> ToolSpec[Any, Any]:
    try:
        return TOOLS[(service, name)]
    except KeyError:
        raise KeyError(f"no tool {service}.{name} is defined") from None
