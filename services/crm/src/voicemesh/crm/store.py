"""Contacts and their history, over the crm's tables (``records`` has the per-vertical ones).

History is fed by events (calls, appointments, texts); each interaction row carries the id of
the event that made it, under a unique constraint, so a redelivered event records nothing new.
Contact lookups are answered from a per-tenant cache (``cache.LookupCache``) that every
contact write of this process invalidates.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Table, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from voicemesh.common import NotFound, UnavailableError
from voicemesh.common.contracts.events import ToolErrorCode
from voicemesh.common.contracts.tools import (
    AddNoteArgs,
    ContactInfo,
    ContactResult,
    InteractionsResult,
    LookupContactArgs,
    NoteResult,
    ToolFailure,
    ToolOutput,
    UpsertContactArgs,
)
from voicemesh.common.contracts.tools import Interaction as InteractionOut
from voicemesh.common.runtime.db import Database
from voicemesh.crm.cache import LookupCache
from voicemesh.crm.models import CallLink, Contact, Interaction, Note, new_id

__all__ = ["Crm", "contact_info", "crm_session", "name_key", "output_of"]

log = logging.getLogger(__name__)

MAX_MATCHES = 10

Out = TypeVar("Out", bound=ToolOutput)


def _now() -> datetime:
    return datetime.now(UTC)


def name_key(name: str) -> str:
    return " ".join(name.lower().split())


def crm_session(db: Database) -> AbstractAsyncContextManager[AsyncSession]:
    """A SQLModel session on the crm's engine; an unreachable database is ``UnavailableError``."""
    return db.model_session("crm")


def output_of(model: type[Out], row: SQLModel, **values: Any) -> Out:
    """A tool's output ``model`` from a table row: the fields they share, then ``values``
    (the row's ``id`` under the output's name for it, say)."""
    shared = row.model_dump(include=set(model.model_fields) - values.keys())
    return model.model_validate({**shared, **values})


def contact_info(row: Contact) -> ContactInfo:
    return output_of(ContactInfo, row, contact_id=row.id)


class Crm:
    """Contacts, notes and history of every tenant this process serves."""

    def __init__(self, db: Database, *, lookup_cache_ttl_s: float = 0.0) -> None:
        self._db = db
        self._lookups = LookupCache(lookup_cache_ttl_s)
        interactions: Table = SQLModel.metadata.tables["crm_interactions"]
        dialect = sqlite if db.is_sqlite else postgresql
        # History rows arrive once per event and again on redelivery: a Core insert that the
        # unique source-event id turns into a no-op costs a fraction of an ORM flush that
        # fails with an IntegrityError.
        self._insert_interaction = dialect.insert(interactions).on_conflict_do_nothing()

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        return crm_session(self._db)

    # -- contacts ---------------------------------------------------------------------------

    async def lookup(
        self, tenant: str, args: LookupContactArgs, *, call_id: str | None = None
    ) -> list[ContactInfo]:
        email = args.email.lower() if args.email else None
        key = name_key(args.name) if args.name else None
        found = self._lookups.get(tenant, (args.phone, email, key))
        if found is None:
            generation = self._lookups.generation(tenant)
            found = await self._lookup(tenant, args.phone, email, key)
            self._lookups.put(tenant, (args.phone, email, key), found, generation)
        if not found:
            raise NotFound("no contact matches")
        if call_id and len(found) == 1:
            await self.link_call(tenant, call_id, found[0].contact_id)
        return list(found)

    async def _lookup(
        self, tenant: str, phone: str | None, email: str | None, key: str | None
    ) -> tuple[ContactInfo, ...]:
        query = select(Contact).where(Contact.tenant == tenant)
        if phone:
            query = query.where(Contact.phone == phone)
        if email:
            query = query.where(Contact.email == email)
        if key:
            query = query.where(col(Contact.name_key).contains(key))
        async with self.session() as session:
            rows = (
                await session.exec(
                    query.order_by(col(Contact.updated_at).desc()).limit(MAX_MATCHES)
                )
            ).all()
        return tuple(contact_info(r) for r in rows)

    async def get_contact(self, tenant: str, contact_id: str) -> Contact:
        async with self.session() as session:
            row = await session.get(Contact, contact_id)
        if row is None or row.tenant != tenant:
            raise NotFound(f"no contact {contact_id}")
        return row

    async def contacts(self, tenant: str, *, query: str | None, limit: int) -> list[Contact]:
        stmt = select(Contact).where(Contact.tenant == tenant)
        if query:
            key = name_key(query)
            stmt = stmt.where(
                or_(
                    col(Contact.name_key).contains(key),
                    col(Contact.phone) == query,
                    col(Contact.email) == query.lower(),
                )
            )
        async with self.session() as session:
            rows = await session.exec(stmt.order_by(col(Contact.updated_at).desc()).limit(limit))
            return list(rows.all())

    async def upsert(
        self, tenant: str, args: UpsertContactArgs, *, create_only: bool = False
    ) -> ContactResult:
        """Create a contact or update the one with this id, phone or email; ``create_only``:
        a phone or email that is another contact's is ``forbidden``, not an update of it."""
        email = args.email.lower() if args.email else None
        try:
            async with self.session() as session:
                row = await self._find(session, tenant, args.contact_id, args.phone, email)
                if row is not None and create_only:
                    raise ToolFailure(
                        ToolErrorCode.FORBIDDEN, "that phone or email is another contact's"
                    )
                created = row is None
                now = _now()
                if row is None:
                    row = Contact(tenant=tenant, created_at=now, updated_at=now)
                if args.name is not None:
                    row.name = args.name
                    row.name_key = name_key(args.name)
                if args.phone is not None:
                    row.phone = args.phone
                if email is not None:
                    row.email = email
                row.updated_at = now
                session.add(row)
                await session.commit()
        except IntegrityError as exc:
            # The phone or email already belongs to another contact (or a concurrent insert
            # won): never merge two people silently.
            raise ToolFailure(
                ToolErrorCode.CONFLICT, "that phone or email belongs to another contact"
            ) from exc
        finally:
            self._lookups.invalidate(tenant)
        return ContactResult(contact=contact_info(row), created=created)

    async def _find(
        self,
        session: AsyncSession,
        tenant: str,
        contact_id: str | None,
        phone: str | None,
        email: str | None,
    ) -> Contact | None:
        if contact_id:
            row = await session.get(Contact, contact_id)
            if row is None or row.tenant != tenant:
                raise NotFound(f"no contact {contact_id}")
            return row
        for column, value in ((Contact.phone, phone), (Contact.email, email)):
            if value:
                found = (
                    await session.exec(
                        select(Contact).where(Contact.tenant == tenant, column == value)
                    )
                ).first()
                if found is not None:
                    return found
        return None

    async def contact_by_phone(self, tenant: str, phone: str) -> Contact | None:
        async with self.session() as session:
            return (
                await session.exec(
                    select(Contact).where(Contact.tenant == tenant, Contact.phone == phone)
                )
            ).first()

    # -- notes and history ------------------------------------------------------------------

    async def add_note(self, tenant: str, args: AddNoteArgs, *, call_id: str | None) -> NoteResult:
        await self.get_contact(tenant, args.contact_id)
        note = Note(
            tenant=tenant,
            contact_id=args.contact_id,
            text=args.text,
            call_id=call_id,
            created_at=_now(),
        )
        async with self.session() as session:
            session.add(note)
            await session.commit()
        return NoteResult(note_id=note.id, contact_id=note.contact_id, created_at=note.created_at)

    async def interactions(self, tenant: str, contact_id: str, limit: int) -> InteractionsResult:
        await self.get_contact(tenant, contact_id)
        async with self.session() as session:
            events = (
                await session.exec(
                    select(Interaction)
                    .where(Interaction.tenant == tenant, Interaction.contact_id == contact_id)
                    .order_by(col(Interaction.occurred_at).desc())
                    .limit(limit)
                )
            ).all()
            notes = (
                await session.exec(
                    select(Note)
                    .where(Note.tenant == tenant, Note.contact_id == contact_id)
                    .order_by(col(Note.created_at).desc())
                    .limit(limit)
                )
            ).all()
        items = [
            # kind is written only by record() below: one of the four kinds
            output_of(InteractionOut, e)
            for e in events
        ] + [
            InteractionOut(
                kind="note", occurred_at=n.created_at, summary=n.text[:256], call_id=n.call_id
            )
            for n in notes
        ]
        items.sort(key=lambda i: i.occurred_at, reverse=True)
        return InteractionsResult(interactions=items[:limit])

    async def link_call(self, tenant: str, call_id: str, contact_id: str) -> None:
        async with self.session() as session:
            link = await session.get(CallLink, (tenant, call_id))
            if link is None:
                session.add(CallLink(tenant=tenant, call_id=call_id, contact_id=contact_id))
            else:
                link.contact_id = contact_id
                session.add(link)
            await session.commit()

    async def contact_of_call(self, tenant: str, call_id: str) -> str | None:
        async with self.session() as session:
            link = await session.get(CallLink, (tenant, call_id))
            return link.contact_id if link else None

    async def record(
        self,
        tenant: str,
        contact_id: str,
        *,
        kind: str,
        summary: str,
        source_event_id: str,
        occurred_at: datetime,
        call_id: str | None = None,
    ) -> bool:
        """Record one interaction; False if this event was recorded before."""
        row = {
            "id": new_id(),
            "tenant": tenant,
            "contact_id": contact_id,
            "kind": kind,
            "summary": summary[:256],
            "call_id": call_id,
            "source_event_id": source_event_id,
            "occurred_at": occurred_at,
        }
        try:
            async with self._db.engine.begin() as conn:
                result = await conn.execute(self._insert_interaction, row)
        except (OperationalError, DBAPIError, OSError) as exc:
            raise UnavailableError(f"crm database unavailable: {type(exc).__name__}") from exc
        return bool(result.rowcount == 1)

    async def contact_id_for_phone(self, tenant: str, phone: str) -> str:
        """The id of the contact with ``phone``, created if need be; from the cache if known."""
        key = (phone, None, None)  # the key of a lookup by this phone alone
        cached = self._lookups.get(tenant, key)
        if cached and len(cached) == 1:
            return cached[0].contact_id
        generation = self._lookups.generation(tenant)
        row = await self.ensure_contact(tenant, phone)
        self._lookups.put(tenant, key, (contact_info(row),), generation)
        return row.id

    async def ensure_contact(self, tenant: str, phone: str) -> Contact:
        """The contact with ``phone``, created (nameless) if the crm has not met them yet."""
        existing = await self.contact_by_phone(tenant, phone)
        if existing is not None:
            return existing
        now = _now()
        try:
            async with self.session() as session:
                row = Contact(tenant=tenant, phone=phone, created_at=now, updated_at=now)
                session.add(row)
                await session.commit()
                return row
        except IntegrityError:
            found = await self.contact_by_phone(tenant, phone)
            if found is None:
                raise
            return found
        finally:
            self._lookups.invalidate(tenant)
