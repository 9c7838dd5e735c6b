"""Whom a call acts for, and the contact writes a call may make.

A call's tool requests come from its agent, which does what its model says, and a caller can
talk a model into anything: "update the number on file for Maria Lopez". So a request made on
a call never chooses whose contact it writes. The call acts for one contact, bound here: the
one named by a verified number (the tenant backend's word: ``CallRequested.phone`` for a
pushed call, ``CallConnected.phone`` for one it created at the gateway with its API key), or
else the one the call itself creates. Its name and email may change; its number on
file may not, and no other contact is touched. A request with no call (a tenant backend)
keeps the full ``upsert_contact``.
"""

from __future__ import annotations

from voicemesh.common.contracts.events import ToolErrorCode
from voicemesh.common.contracts.tools import (
    CallerResult,
    ContactResult,
    ToolFailure,
    UpsertContactArgs,
)
from voicemesh.crm.models import CallCaller
from voicemesh.crm.store import Crm

__all__ = ["Callers"]


class Callers:
    """The contact each call acts for, and the contact writes made on a call."""

    def __init__(self, crm: Crm) -> None:
        self._crm = crm

    async def bind_verified(self, tenant: str, call_id: str, phone: str) -> str:
        """Bind the call to the contact with ``phone`` (created if new); its id."""
        contact_id = await self._crm.contact_id_for_phone(tenant, phone)
        await self._bind(tenant, call_id, contact_id, phone)
        await self._crm.link_call(tenant, call_id, contact_id)
        return contact_id

    async def of_call(self, tenant: str, call_id: str) -> CallerResult:
        async with self._crm.session() as session:
            row = await session.get(CallCaller, (tenant, call_id))
        if row is None:
            return CallerResult()
        return CallerResult(contact_id=row.contact_id, verified_phone=row.verified_phone)

    async def upsert(self, tenant: str, call_id: str, args: UpsertContactArgs) -> ContactResult:
        """``upsert_contact`` made on a call: only ever the call's own contact."""
        bound = (await self.of_call(tenant, call_id)).contact_id
        if bound is None:
            if args.contact_id is not None:
                raise ToolFailure(ToolErrorCode.FORBIDDEN, "a call can only write its own contact")
            result = await self._crm.upsert(tenant, args, create_only=True)
            await self._bind(tenant, call_id, result.contact.contact_id, None)
            await self._crm.link_call(tenant, call_id, result.contact.contact_id)
            return result
        if args.contact_id not in (None, bound):
            raise ToolFailure(ToolErrorCode.FORBIDDEN, "a call can only write its own contact")
        on_file = (await self._crm.get_contact(tenant, bound)).phone
        if args.phone is not None and on_file is not None and args.phone != on_file:
            raise ToolFailure(
                ToolErrorCode.FORBIDDEN, "the number on file cannot be changed on a call"
            )
        own = UpsertContactArgs(
            contact_id=bound, name=args.name, phone=args.phone, email=args.email
        )
        return await self._crm.upsert(tenant, own)

    async def _bind(
        self, tenant: str, call_id: str, contact_id: str, verified_phone: str | None
    ) -> None:
        async with self._crm.session() as session:
            row = await session.get(CallCaller, (tenant, call_id))
            if row is None:
                row = CallCaller(tenant=tenant, call_id=call_id, contact_id=contact_id)
            elif row.verified_phone is not None and verified_phone is None:
                return  # a verified binding is never replaced by an unverified one
            row.contact_id = contact_id
            row.verified_phone = verified_phone
            session.add(row)
            await session.commit()
