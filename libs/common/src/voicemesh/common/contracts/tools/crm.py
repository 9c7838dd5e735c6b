"""The crm service's tools: contacts, notes, interactions, listings, matters, policies, claims.

On a call, ``upsert_contact`` is bound to the call's own contact (the one its request named by
verified number, or the one the call created), and ``caller`` tells a tool service which
contact and verified number that is.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field, model_validator

from voicemesh.common.contracts.tools.base import (
    Email,
    Id,
    IdempotencyKey,
    Name,
    Phone,
    ToolArgs,
    ToolOutput,
)

__all__ = [
    "AddNoteArgs",
    "CallerArgs",
    "CallerResult",
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
    "ListInteractionsArgs",
    "Listing",
    "ListingsResult",
    "LookupContactArgs",
    "LookupPolicyArgs",
    "NoteResult",
    "Policy",
    "SearchListingsArgs",
    "UpsertContactArgs",
]


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


class CallerArgs(ToolArgs):
    """The request's call is the question: no arguments."""


class CallerResult(ToolOutput):
    """Who a call is with: its contact, and the number its request verified (if any)."""

    contact_id: str | None = None
    verified_phone: str | None = None


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
