"""The crm service application: ``create_app(settings)`` wires it, ``__main__`` runs it.

Tools on ``vm.<tenant>.tool.crm.*`` (on a call, bound to the call's own contact:
``callers``, from the verified phone of ``CallRequested`` or ``CallConnected``); contact
history fed by two durable consumers (``crm-calls`` on call lifecycle, ``crm-events`` on
appointment and SMS events), each acking only after its row is committed; an authenticated
read API under ``/v1/{tenant}/``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from faststream import Context
from faststream.nats.message import NatsMessage
from pydantic import BaseModel, ValidationError

from voicemesh.common import (
    AnyEvent,
    AppointmentChanged,
    CallConnected,
    CallEnded,
    CallMissed,
    CallRequested,
    InvalidMessage,
    LifecycleEvent,
    MeshService,
    NotFound,
    SmsStatus,
    decode_event,
    subscribe_durable,
)
from voicemesh.common.contracts import streams
from voicemesh.common.contracts.tools import (
    TOOLS,
    AddNoteArgs,
    CallerArgs,
    CallerResult,
    Claim,
    ConflictCheckArgs,
    ConflictCheckResult,
    ContactInfo,
    ContactResult,
    ContactsResult,
    FileClaimArgs,
    InteractionsResult,
    ListingsResult,
    ListInteractionsArgs,
    LookupContactArgs,
    LookupPolicyArgs,
    NoteResult,
    Policy,
    SearchListingsArgs,
    UpsertContactArgs,
)
from voicemesh.common.runtime.auth import ApiKeys, tenant_guard
from voicemesh.common.runtime.tools import ToolCall, ToolServer
from voicemesh.crm.callers import Callers
from voicemesh.crm.records import VerticalRecords
from voicemesh.crm.settings import CrmSettings
from voicemesh.crm.store import Crm, contact_info

__all__ = ["ContactsOut", "create_app"]


class ContactsOut(BaseModel):
    contacts: list[ContactInfo]


def create_app(settings: CrmSettings) -> MeshService:
    service = MeshService(
        "crm", settings, description="CRM tools: contacts, notes, interactions and listings."
    )
    db = service.database()
    crm = Crm(db, lookup_cache_ttl_s=settings.lookup_cache_ttl_s)
    records = VerticalRecords(db)
    callers = Callers(crm)

    @service.on_startup
    async def seed_demo_data() -> None:
        if settings.seed_demo_data:
            for tenant in service.tenants:
                await records.seed(tenant.id, tenant.vertical.value)

    _tools(service, settings, crm, callers, records)
    _consumers(service, settings, crm, callers)
    _http_routes(service, settings, crm, records)
    service.provide(crm)
    return service


def _tools(
    service: MeshService,
    settings: CrmSettings,
    crm: Crm,
    callers: Callers,
    records: VerticalRecords,
) -> None:
    tools = ToolServer(service, max_workers=settings.tool_workers)

    @tools.tool(TOOLS[("crm", "lookup_contact")])
    async def lookup_contact(call: ToolCall, args: LookupContactArgs) -> ContactsResult:
        found = await crm.lookup(call.tenant.id, args, call_id=call.call_id)
        return ContactsResult(contacts=found)

    @tools.tool(TOOLS[("crm", "upsert_contact")])
    async def upsert_contact(call: ToolCall, args: UpsertContactArgs) -> ContactResult:
        if call.call_id is not None:
            return await callers.upsert(call.tenant.id, call.call_id, args)
        return await crm.upsert(call.tenant.id, args)

    @tools.tool(TOOLS[("crm", "caller")])
    async def caller(call: ToolCall, args: CallerArgs) -> CallerResult:
        if call.call_id is None:
            raise InvalidMessage("caller answers for a call: the request names none")
        return await callers.of_call(call.tenant.id, call.call_id)

    @tools.tool(TOOLS[("crm", "add_note")])
    async def add_note(call: ToolCall, args: AddNoteArgs) -> NoteResult:
        return await crm.add_note(call.tenant.id, args, call_id=call.call_id)

    @tools.tool(TOOLS[("crm", "list_interactions")])
    async def list_interactions(call: ToolCall, args: ListInteractionsArgs) -> InteractionsResult:
        return await crm.interactions(call.tenant.id, args.contact_id, args.limit)

    @tools.tool(TOOLS[("crm", "search_listings")])
    async def search_listings(call: ToolCall, args: SearchListingsArgs) -> ListingsResult:
        return await records.search_listings(call.tenant.id, args)

    @tools.tool(TOOLS[("crm", "conflict_check")])
    async def conflict_check(call: ToolCall, args: ConflictCheckArgs) -> ConflictCheckResult:
        return await records.conflict_check(call.tenant.id, args)

    @tools.tool(TOOLS[("crm", "lookup_policy")])
    async def lookup_policy(call: ToolCall, args: LookupPolicyArgs) -> Policy:
        return await records.lookup_policy(call.tenant.id, args)

    @tools.tool(TOOLS[("crm", "file_claim")])
    async def file_claim(call: ToolCall, args: FileClaimArgs) -> Claim:
        return await records.file_claim(call.tenant.id, args)


def _consumers(service: MeshService, settings: CrmSettings, crm: Crm, callers: Callers) -> None:
    @subscribe_durable(service.broker, streams.consumer("crm", "calls"), settings.tenant)
    async def on_call(event: LifecycleEvent) -> None:
        service.tenants.served(event.tenant)
        if isinstance(event, CallRequested | CallConnected):
            # The tenant backend's word (a pushed call's request, or a call it created at
            # the gateway with its API key): the call acts for this number.
            if event.phone:
                await callers.bind_verified(event.tenant, event.call_id, event.phone)
            return
        if not isinstance(event, CallEnded | CallMissed):
            return
        contact_id = await crm.contact_of_call(event.tenant, event.call_id)
        if contact_id is None:
            return  # a call with nobody the crm knows: nothing to add to a history
        summary = (
            "missed call"
            if isinstance(event, CallMissed)
            else f"call ended ({event.reason.value}, {event.duration_s:.0f} s)"
        )
        await crm.record(
            event.tenant,
            contact_id,
            kind="call",
            summary=summary,
            source_event_id=event.event_id,
            occurred_at=event.occurred_at,
            call_id=event.call_id,
        )

    @subscribe_durable(service.broker, streams.consumer("crm", "events"), settings.tenant)
    async def on_event(msg: Annotated[NatsMessage, Context("message")]) -> None:
        event = _history_event(msg.raw_message.data)
        if isinstance(event, AppointmentChanged):
            service.tenants.served(event.tenant)
            await _record_appointment(crm, event)
        elif isinstance(event, SmsStatus):
            service.tenants.served(event.tenant)
            await _record_sms(crm, event)
        # Tool, push, hand-off and other events are not part of a contact's history.


def _history_event(data: bytes) -> AnyEvent | None:
    """The event in ``data``, or ``None`` for a type the registry does not know.

    A type newer than this service is not history it can keep: it is ignored, like the
    known kinds it does not keep. A malformed event of a known type is ``InvalidMessage``.
    """
    try:
        return decode_event(data)
    except InvalidMessage as exc:
        cause = exc.__cause__
        if isinstance(cause, ValidationError) and all(
            e["type"] == "union_tag_invalid" for e in cause.errors()
        ):
            return None
        raise


async def _record_appointment(crm: Crm, event: AppointmentChanged) -> None:
    contact_id = None
    if event.contact_id:
        try:
            contact_id = (await crm.get_contact(event.tenant, event.contact_id)).id
        except NotFound:
            contact_id = None
    if contact_id is None and event.phone:
        contact_id = await crm.contact_id_for_phone(event.tenant, event.phone)
    if contact_id is None:
        return
    await crm.record(
        event.tenant,
        contact_id,
        kind="appointment",
        summary=f"appointment {event.change} for {event.start:%Y-%m-%d %H:%M} UTC",
        source_event_id=event.event_id,
        occurred_at=event.occurred_at,
        call_id=event.call_id,
    )


async def _record_sms(crm: Crm, event: SmsStatus) -> None:
    if event.status == "delivered":
        return  # the "sent" row already tells the story; delivery is the provider's detail
    contact = await crm.contact_by_phone(event.tenant, event.to)
    if contact is None:
        return
    await crm.record(
        event.tenant,
        contact.id,
        kind="sms",
        summary=f"text {event.status.replace('_', ' ')}",
        source_event_id=event.event_id,
        occurred_at=event.occurred_at,
        call_id=event.call_id,
    )


def _http_routes(
    service: MeshService, settings: CrmSettings, crm: Crm, records: VerticalRecords
) -> None:
    guard = tenant_guard(ApiKeys.from_settings(settings), service.tenants)
    http = service.http

    @http.get("/v1/{tenant}/contacts", tags=["crm"])
    async def contacts(
        tenant: str = Depends(guard),
        q: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> ContactsOut:
        rows = await crm.contacts(tenant, query=q, limit=limit)
        return ContactsOut(contacts=[contact_info(r) for r in rows])

    @http.get("/v1/{tenant}/contacts/{contact_id}", tags=["crm"])
    async def contact(contact_id: str, tenant: str = Depends(guard)) -> ContactInfo:
        return contact_info(await crm.get_contact(tenant, contact_id))

    @http.get("/v1/{tenant}/contacts/{contact_id}/interactions", tags=["crm"])
    async def interactions(
        contact_id: str,
        tenant: str = Depends(guard),
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> InteractionsResult:
        return await crm.interactions(tenant, contact_id, limit)

    @http.get("/v1/{tenant}/listings", tags=["crm"])
    async def listings(
        tenant: str = Depends(guard),
        city: Annotated[str | None, Query(max_length=64)] = None,
        max_price: Annotated[int | None, Query(ge=0)] = None,
        min_beds: Annotated[int | None, Query(ge=0, le=20)] = None,
        limit: Annotated[int, Query(ge=1, le=50)] = 20,
    ) -> ListingsResult:
        args = SearchListingsArgs(
            city=city, max_price=max_price, min_beds=min_beds, status="any", limit=limit
        )
        return await records.search_listings(tenant, args)
