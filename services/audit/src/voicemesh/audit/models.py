"""The audit service's tables: the append-only log and each tenant's chain head."""

from __future__ import annotations

from dataclasses import fields
from typing import cast

from sqlalchemy import BigInteger, Column, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from voicemesh.audit.chain import ChainEntry

__all__ = ["HEAD", "LOG", "AuditHead", "AuditRecord"]


class AuditRecord(SQLModel, table=True):
    """One recorded event. Rows are only ever inserted; ``(tenant, seq)`` is the position."""

    __tablename__ = "audit_log"
    __table_args__ = (
        # Idempotency: a redelivered event can never make a second row.
        UniqueConstraint("tenant", "event_id", name="uq_audit_log_event"),
        Index("ix_audit_log_call", "tenant", "call_id", "seq"),
        Index("ix_audit_log_time", "tenant", "occurred_at"),
    )

    tenant: str = Field(primary_key=True)
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    event_id: str
    event_type: str
    call_id: str | None = None
    source: str
    subject: str
    occurred_at: str
    recorded_at: str
    payload: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str
    hash: str

    def entry(self) -> ChainEntry:
        return ChainEntry(**self.model_dump(include={f.name for f in fields(ChainEntry)}))


class AuditHead(SQLModel, table=True):
    """The last row of a tenant's chain.

    Writers move it with a compare-and-swap in the same transaction as their rows, so two
    writers can never both extend the same row (the chain never forks), and ``verify`` can
    tell when rows were cut off the end.
    """

    __tablename__ = "audit_head"

    tenant: str = Field(primary_key=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str


#: The tables as SQLAlchemy Core sees them (typed columns for queries: ``LOG.c.seq``).
LOG = cast(Table, getattr(AuditRecord, "__table__"))  # noqa: B009 - untyped in SQLModel
HEAD = cast(Table, getattr(AuditHead, "__table__"))  # noqa: B009
