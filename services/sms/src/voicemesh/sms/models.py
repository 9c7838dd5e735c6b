"""The sms service's tables: every message it was asked to send, who opted out, and which
inbound messages were already acted on."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from voicemesh.common.contracts.ids import new_id

__all__ = ["InboundMessage", "OptOut", "SmsMessage"]


class SmsMessage(SQLModel, table=True):
    """One job, claimed by its idempotency key before anything is sent."""

    __tablename__ = "sms_messages"
    __table_args__ = (UniqueConstraint("tenant", "idempotency_key", name="uq_sms_idempotency"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=63)
    idempotency_key: str = Field(max_length=128)
    to: str = Field(index=True, max_length=16)
    body: str = Field(max_length=1600)
    purpose: str = Field(default="", max_length=64)
    call_id: str | None = Field(default=None, max_length=64)
    status: str = Field(default="pending", max_length=16)
    provider: str = Field(default="", max_length=16)
    provider_id: str | None = Field(default=None, index=True, max_length=64)
    detail: str = Field(default="", max_length=512)
    attempts: int = 0
    created_at: datetime
    sent_at: datetime | None = None
    updated_at: datetime


class OptOut(SQLModel, table=True):
    """A number that replied STOP: it gets nothing until it replies START."""

    __tablename__ = "sms_opt_outs"

    tenant: str = Field(primary_key=True, max_length=63)
    phone: str = Field(primary_key=True, max_length=16)
    source: str = Field(default="reply", max_length=16)
    created_at: datetime


class InboundMessage(SQLModel, table=True):
    """An inbound message already acted on, by the provider's id (Twilio's ``MessageSid``):
    the same message again, retried or replayed, changes nothing. No number, no words."""

    __tablename__ = "sms_inbound"

    tenant: str = Field(primary_key=True, max_length=63)
    message_id: str = Field(primary_key=True, max_length=64)
    received_at: datetime
