"""The crm service's tables: contacts and their history, plus the per-vertical records
(listings for real estate, matters for legal, policies and claims for insurance)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from voicemesh.common.contracts.ids import new_id

__all__ = [
    "CallCaller",
    "CallLink",
    "Claim",
    "Contact",
    "ContactEntry",
    "Interaction",
    "Listing",
    "Matter",
    "Note",
    "Policy",
    "new_id",
]


class Contact(SQLModel, table=True):
    __tablename__ = "crm_contacts"
    __table_args__ = (
        UniqueConstraint("tenant", "phone", name="uq_crm_contact_phone"),
        UniqueConstraint("tenant", "email", name="uq_crm_contact_email"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=63)
    name: str | None = Field(default=None, max_length=128)
    name_key: str = Field(default="", index=True, max_length=128)
    phone: str | None = Field(default=None, max_length=16)
    email: str | None = Field(default=None, max_length=254)
    created_at: datetime
    updated_at: datetime


class ContactEntry(SQLModel):
    """What a note and an interaction share: each is an entry in one contact's history."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(max_length=63)
    contact_id: str = Field(index=True, max_length=32)


class Note(ContactEntry, table=True):
    __tablename__ = "crm_notes"

    text: str = Field(max_length=4000)
    call_id: str | None = Field(default=None, max_length=64)
    created_at: datetime


class Interaction(ContactEntry, table=True):
    """Something that happened with a contact, recorded once per source event."""

    __tablename__ = "crm_interactions"
    __table_args__ = (UniqueConstraint("tenant", "source_event_id", name="uq_crm_interaction"),)

    kind: str = Field(max_length=16)
    summary: str = Field(max_length=256)
    call_id: str | None = Field(default=None, max_length=64)
    source_event_id: str = Field(max_length=64)
    occurred_at: datetime


class CallLink(SQLModel, table=True):
    """Which contact a call was with: from the call request's phone or a lookup in the call."""

    __tablename__ = "crm_call_links"

    tenant: str = Field(primary_key=True, max_length=63)
    call_id: str = Field(primary_key=True, max_length=64)
    contact_id: str = Field(max_length=32)


class CallCaller(SQLModel, table=True):
    """Whom a call acts for: the contact its request named by verified number, or the one
    the call itself created. Unlike ``CallLink`` (history, which a lookup in the call may
    move), nothing a model asks for changes it: it binds the call's tool requests."""

    __tablename__ = "crm_call_callers"

    tenant: str = Field(primary_key=True, max_length=63)
    call_id: str = Field(primary_key=True, max_length=64)
    contact_id: str = Field(max_length=32)
    #: the number the call's request gave (a tenant backend's word); None if the call
    #: created its contact from what the caller said
    verified_phone: str | None = Field(default=None, max_length=16)


class Listing(SQLModel, table=True):
    __tablename__ = "crm_listings"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=63)
    address: str = Field(max_length=200)
    city: str = Field(max_length=64)
    city_key: str = Field(max_length=64)
    price: int
    beds: int
    baths: float
    status: str = Field(default="active", max_length=16)


class Matter(SQLModel, table=True):
    __tablename__ = "crm_matters"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=63)
    title: str = Field(max_length=200)
    client_name: str = Field(max_length=128)
    adverse_parties: str = Field(default="", max_length=1000, description="'; '-separated")


class Policy(SQLModel, table=True):
    __tablename__ = "crm_policies"

    tenant: str = Field(primary_key=True, max_length=63)
    policy_number: str = Field(primary_key=True, max_length=32)
    holder_name: str = Field(max_length=128)
    holder_phone: str | None = Field(default=None, index=True, max_length=16)
    kind: str = Field(max_length=32)
    status: str = Field(default="active", max_length=16)
    deductible: int = 0


class Claim(SQLModel, table=True):
    __tablename__ = "crm_claims"
    __table_args__ = (UniqueConstraint("tenant", "idempotency_key", name="uq_crm_claim_key"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(max_length=63)
    policy_number: str = Field(index=True, max_length=32)
    incident_date: date
    description: str = Field(max_length=2000)
    status: str = Field(default="filed", max_length=16)
    idempotency_key: str = Field(max_length=128)
    filed_at: datetime
