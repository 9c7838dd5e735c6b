"""The sms service application: ``create_app(settings)`` wires it, ``__main__`` runs it.

SMS jobs arrive on ``vm.<tenant>.sms.outbound`` (durable consumer ``sms-jobs``, acked only
after the outcome is committed); the ``send`` tool enqueues one; delivery outcomes go out on
``vm.<tenant>.event.sms``. The HTTP API lists messages and opt-outs (tenant API key) and
takes Twilio's inbound-reply and status webhooks (Twilio request signature).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Response
from faststream import Context
from faststream.nats.message import NatsMessage
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from voicemesh.common import MeshService, SmsJob, subscribe_durable
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import ToolErrorCode
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.contracts.tools import (
    PHONE_PATTERN,
    TOOLS,
    CallerArgs,
    CallerResult,
    SendSmsArgs,
    SendSmsResult,
    ToolFailure,
)
from voicemesh.common.runtime.auth import ApiKeys, tenant_guard
from voicemesh.common.runtime.tools import ToolCall, ToolClient, ToolServer
from voicemesh.sms.models import SmsMessage
from voicemesh.sms.providers import OutboxProvider, SmsProvider, TwilioProvider
from voicemesh.sms.sender import RateLimiter, SmsSender
from voicemesh.sms.settings import SmsSettings
from voicemesh.sms.webhooks import twilio_webhooks

__all__ = ["create_app"]

DESCRIPTION = "SMS service: outbound text messages, opt-outs and delivery status."


class PhoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(pattern=PHONE_PATTERN)


class InboundIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sender: str = Field(alias="from", pattern=PHONE_PATTERN)
    body: str = Field(max_length=1600)


class MessageOut(BaseModel):
    id: str
    idempotency_key: str
    to: str
    body: str
    purpose: str
    status: str
    provider: str
    provider_id: str | None
    detail: str
    created_at: str

    @classmethod
    def of(cls, row: SmsMessage) -> MessageOut:
        # Every field is the row's, by the same name; the time is shown as ISO 8601 text.
        return cls.model_validate(row.model_dump() | {"created_at": row.created_at.isoformat()})


def _provider(settings: SmsSettings) -> SmsProvider:
    if settings.provider == "twilio":
        return TwilioProvider(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            base_url=settings.twilio_base_url,
            timeout_s=settings.twilio_timeout_s,
        )
    return OutboxProvider()


def create_app(settings: SmsSettings) -> MeshService:
    service = MeshService("sms", settings, description=DESCRIPTION)
    # Engine and Redis pool connect lazily: nothing is opened before the startup hook.
    db = service.database()
    redis: Redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
    provider = _provider(settings)
    public = settings.public_url.rstrip("/")
    sender = SmsSender(
        db,
        provider,
        RateLimiter(redis, limit=settings.rate_limit, window_s=settings.rate_window_s),
        service.events,
        sender_id=settings.sender_id,
        status_callback=lambda t: f"{public}/v1/{t}/twilio/status" if public else None,
    )

    @service.on_shutdown
    async def close_clients() -> None:
        await provider.close()
        await redis.aclose()

    @subscribe_durable(service.broker, streams.consumer("sms", "jobs"), settings.tenant)
    async def on_job(job: SmsJob, msg: Annotated[NatsMessage, Context("message")]) -> None:
        # The subject's tenant is the job's: the delivery policy's tenant fence checked it.
        service.tenants.served(job.tenant)
        await sender.handle(job, heartbeat=msg.raw_message.in_progress)

    tools = ToolServer(service, max_workers=settings.tool_workers)
    crm = ToolClient(service.broker, source="sms", tracer=service.telemetry.tracer)

    async def recipient(call: ToolCall, args: SendSmsArgs) -> str:
        """A backend's ``to``; on a call, the number its request verified (asked of crm,
        which keeps whom each call is with), never one the model names."""
        if call.call_id is None:
            if args.to is None:
                raise ToolFailure(ToolErrorCode.INVALID, "to: a text needs a recipient")
            return args.to
        caller: CallerResult = await crm.call_typed(
            call.tenant.id, TOOLS[("crm", "caller")], CallerArgs(), call_id=call.call_id
        )
        if caller.verified_phone is None:
            raise ToolFailure(ToolErrorCode.FORBIDDEN, "this call has no verified number to text")
        return caller.verified_phone

    @tools.tool(TOOLS[("sms", "send")])
    async def send(call: ToolCall, args: SendSmsArgs) -> SendSmsResult:
        tenant = call.tenant.id
        to = await recipient(call, args)
        if await sender.opted_out(tenant, to):
            return SendSmsResult(idempotency_key=args.idempotency_key, queued=False)
        job = SmsJob(
            event_id=derived_id(tenant, args.idempotency_key),
            tenant=tenant,
            call_id=call.call_id,
            source="sms",
            idempotency_key=args.idempotency_key,
            to=to,
            body=args.text(call.tenant.display_name, call.tenant.time_zone),
            purpose=args.purpose,
        )
        await service.events.publish(job, subjects.sms_outbound(tenant))
        return SendSmsResult(idempotency_key=args.idempotency_key, queued=True)

    _http_routes(service, settings, sender)
    service.provide(sender)
    return service


def _http_routes(service: MeshService, settings: SmsSettings, sender: SmsSender) -> None:
    guard = tenant_guard(ApiKeys.from_settings(settings), service.tenants)
    http = service.http

    @http.get("/v1/{tenant}/messages", tags=["sms"])
    async def messages(
        tenant: str = Depends(guard),
        to: Annotated[str | None, Query(pattern=PHONE_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[MessageOut]:
        return [MessageOut.of(r) for r in await sender.messages(tenant, limit=limit, to=to)]

    @http.get("/v1/{tenant}/opt-outs", tags=["sms"])
    async def opt_outs(tenant: str = Depends(guard)) -> list[str]:
        return [r.phone for r in await sender.opt_outs(tenant)]

    @http.post("/v1/{tenant}/opt-outs", status_code=204, tags=["sms"])
    async def add_opt_out(body: PhoneIn, tenant: str = Depends(guard)) -> Response:
        await sender.opt_out(tenant, body.phone, source="api")
        return Response(status_code=204)

    @http.post("/v1/{tenant}/inbound", tags=["sms"])
    async def inbound(body: InboundIn, tenant: str = Depends(guard)) -> dict[str, str]:
        """A reply from a phone (the outbox provider's stand-in for the Twilio webhook)."""
        return {"result": await sender.inbound(tenant, body.sender, body.body)}

    twilio_webhooks(http, settings, service.tenants, sender)
