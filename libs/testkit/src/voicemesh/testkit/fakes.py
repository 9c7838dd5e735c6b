"""Fakes of the mesh's tool services, built on the tool contract so they cannot drift from it.

``ToolDesk`` answers ``vm.<tenant>.tool.*.*`` requests on real NATS the way the crm,
calendar and sms services do: each request's arguments are validated by the tool's own
argument model (``TOOLS``), a handler answers with the tool's result model, and a refusal is
a ``ToolFailure`` mapped to a typed ``ToolError`` by the contract's ``error_for``. It keeps
what it was asked, for tests and benches that run without those services.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import ToolErrorCode, ToolRequest, ToolResult
from voicemesh.common.contracts.tools import (
    AppointmentInfo,
    AppointmentResult,
    BookArgs,
    Claim,
    ConflictCheckArgs,
    ConflictCheckResult,
    ConflictMatch,
    ContactInfo,
    ContactResult,
    FileClaimArgs,
    Listing,
    ListingsResult,
    LookupPolicyArgs,
    Policy,
    SearchListingsArgs,
    SendSmsArgs,
    SendSmsResult,
    ToolArgs,
    ToolFailure,
    ToolOutput,
    UpsertContactArgs,
    error_for,
    tool_spec,
)

__all__ = ["ToolDesk", "standard_desk"]

SOURCE = "tooldesk"

ToolHandler = Callable[[ToolRequest, Any], Awaitable[ToolOutput]]
H = TypeVar("H", bound=ToolHandler)


class ToolDesk:
    """Answers tool requests on real NATS with a handler per tool (``"service.name"``)."""

    def __init__(self, nc: NatsClient, tenant: str) -> None:
        self._nc = nc
        self.tenant = tenant
        self.handlers: dict[str, ToolHandler] = {}
        self.requests: list[ToolRequest] = []
        self._subs: list[Subscription] = []

    def on(self, tool: str) -> Callable[[H], H]:
        """Register ``handler(request, arguments)`` for ``tool``; it must be in ``TOOLS``."""
        service, _, name = tool.partition(".")
        tool_spec(service, name)  # a tool the contract does not define is a test's mistake

        def register(handler: H) -> H:
            self.handlers[tool] = handler
            return handler

        return register

    async def start(self) -> None:
        # Only the services it has handlers for: a real service beside the desk (sms, when
        # the desk stands in for crm) answers its own tools alone.
        for service in sorted({tool.partition(".")[0] for tool in self.handlers}):
            subject = subjects.tool(self.tenant, service, "*")
            self._subs.append(await self._nc.subscribe(subject, cb=self._on_request))
        await self._nc.flush()  # subscribed on the server before anyone asks

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.unsubscribe()

    def calls(self, tool: str) -> list[ToolRequest]:
        return [r for r in self.requests if f"{r.service}.{r.name}" == tool]

    async def _on_request(self, msg: Msg) -> None:
        request = ToolRequest.model_validate_json(msg.data)
        self.requests.append(request)
        answer = {
            "tenant": request.tenant,
            "call_id": request.call_id,
            "source": SOURCE,
            "request_id": request.event_id,
        }
        try:
            output = await self._answer(request)
            result = ToolResult(**answer, ok=True, result=output.model_dump(mode="json"))
        except Exception as exc:
            result = ToolResult(**answer, ok=False, error=error_for(exc))
        await msg.respond(result.model_dump_json().encode())

    async def _answer(self, request: ToolRequest) -> ToolOutput:
        handler = self.handlers.get(f"{request.service}.{request.name}")
        if handler is None:
            raise ToolFailure(ToolErrorCode.UNAVAILABLE, "not served")
        spec = tool_spec(request.service, request.name)
        args: ToolArgs = spec.arguments_of(request)
        output = await handler(request, args)
        expected: type[ToolOutput] = spec.result
        if not isinstance(output, expected):
            raise TypeError(f"the desk's {spec.name} answered {type(output).__name__}")
        return output


def standard_desk(nc: NatsClient, tenant: str, *, conflicted: set[str] | None = None) -> ToolDesk:
    """A desk with the crm, calendar and sms tools every demo vertical uses.

    Bookings keep their start times (a second booking of the same start is ``slot_taken``);
    policy 412551 exists; ``conflicted`` names fail the conflict check.
    """
    desk = ToolDesk(nc, tenant)
    booked: dict[datetime, str] = {}
    adverse = {n.lower() for n in (conflicted or set())}

    @desk.on("calendar.book")
    async def book(request: ToolRequest, args: BookArgs) -> AppointmentResult:
        if args.start in booked and booked[args.start] != args.idempotency_key:
            raise ToolFailure(ToolErrorCode.SLOT_TAKEN, "that slot is taken")
        booked[args.start] = args.idempotency_key
        appointment = AppointmentInfo(
            appointment_id=f"apt{len(booked)}",
            start=args.start,
            end=args.start,
            name=args.name,
            phone=args.phone,
            status="booked",
        )
        return AppointmentResult(appointment=appointment, created=True)

    @desk.on("sms.send")
    async def send(request: ToolRequest, args: SendSmsArgs) -> SendSmsResult:
        return SendSmsResult(idempotency_key=args.idempotency_key, queued=True)

    @desk.on("crm.upsert_contact")
    async def upsert(request: ToolRequest, args: UpsertContactArgs) -> ContactResult:
        now = datetime.now().astimezone()
        contact = ContactInfo(
            contact_id=args.contact_id or "c1",
            name=args.name,
            phone=args.phone,
            email=args.email,
            created_at=now,
            updated_at=now,
        )
        return ContactResult(contact=contact, created=True)

    @desk.on("crm.search_listings")
    async def listings(request: ToolRequest, args: SearchListingsArgs) -> ListingsResult:
        rows = [
            Listing(listing_id="l1", address="12 Elm Street", city="Riverside", price=425000,
                    beds=3, baths=2.0, status="active"),
            Listing(listing_id="l2", address="4 Lake Road", city="Lakewood", price=610000,
                    beds=4, baths=3.0, status="active"),
        ]  # fmt: skip
        beds = args.min_beds or 0
        return ListingsResult(listings=[r for r in rows if r.city == args.city and r.beds >= beds])

    @desk.on("crm.conflict_check")
    async def conflict(request: ToolRequest, args: ConflictCheckArgs) -> ConflictCheckResult:
        matches = [
            ConflictMatch(party=p, matter_id="m1", matter="existing matter", role="client")
            for p in args.parties
            if p.lower() in adverse
        ]
        return ConflictCheckResult(clear=not matches, matches=matches)

    @desk.on("crm.lookup_policy")
    async def policy(request: ToolRequest, args: LookupPolicyArgs) -> Policy:
        if args.policy_number != "412551":
            raise ToolFailure(ToolErrorCode.NOT_FOUND, "no such policy")
        return Policy(policy_number="412551", holder_name="Anna Garcia", kind="auto",
                      status="active", deductible=500)  # fmt: skip

    @desk.on("crm.file_claim")
    async def claim(request: ToolRequest, args: FileClaimArgs) -> Claim:
        if args.policy_number != "412551":
            raise ToolFailure(ToolErrorCode.NOT_FOUND, "no such policy")
        return Claim(claim_id="77", policy_number="412551", incident_date=args.incident_date,
                     status="open", filed_at=datetime.now().astimezone())  # fmt: skip

    return desk
