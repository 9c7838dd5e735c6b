"""Twilio's webhooks: inbound replies and delivery reports, signed with the account's token.

Every request passes the same checks in the same order, so that an answer tells a caller
nothing that the request itself did not:

1. the body is read up to ``MAX_BODY`` bytes, declared or streamed: beyond it, 413;
2. it must be a form in UTF-8, percent-escapes included: otherwise 400;
3. Twilio's signature (checked by the ``twilio`` package's ``RequestValidator``: every value
   of a repeated field, the URL with and without its default port) and the tenant are
   judged together: a forgery and a tenant that does not exist both answer 403, so the
   webhook cannot be used to enumerate tenants.

Twilio retries a webhook it got no answer to, and a signed request captured once can be
sent again (the signature carries no time): both are harmless. An inbound message acts
once per ``MessageSid``; a delivery report only ever moves a message forward.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import FastAPI, HTTPException, Request, Response
from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.sms.sender import SmsSender
from voicemesh.sms.settings import SmsSettings

__all__ = ["MAX_BODY", "TWIML_EMPTY", "twilio_webhooks"]

#: Twilio's own webhooks are a few KiB (an inbound SMS body is at most 1,600 characters).
MAX_BODY = 64 * 1024
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
FORBIDDEN = "bad Twilio signature"

Form = ImmutableMultiDict[str, str]


async def _body(request: Request) -> bytes:
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(413, f"a Twilio webhook body is at most {MAX_BODY} bytes")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > MAX_BODY:
            raise HTTPException(413, f"a Twilio webhook body is at most {MAX_BODY} bytes")
    return bytes(received)


def _form(body: bytes) -> Form:
    """The fields, every value of a repeated name kept, in the order they came."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, "a Twilio webhook body is a UTF-8 form") from exc
    return ImmutableMultiDict(pairs)


def twilio_webhooks(
    http: FastAPI, settings: SmsSettings, tenants: TenantRegistry, sender: SmsSender
) -> None:
    """Add ``POST /v1/{tenant}/twilio/inbound`` and ``…/twilio/status`` to ``http``."""
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    public = settings.public_url.rstrip("/")

    async def signed_form(tenant: str, request: Request) -> Form:
        if settings.provider != "twilio":
            raise HTTPException(404, "not found")
        form = _form(await _body(request))
        # The URL as Twilio called it: this service's public address, never the Host header.
        url = public + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        signature = request.headers.get("X-Twilio-Signature", "")
        # The tenant is judged after the signature, and answered the same, on purpose.
        if not validator.validate(url, form, signature) or tenant not in tenants:
            raise HTTPException(403, FORBIDDEN)
        return form

    @http.post("/v1/{tenant}/twilio/inbound", tags=["twilio"])
    async def twilio_inbound(tenant: str, request: Request) -> Response:
        form = await signed_form(tenant, request)
        sid, phone = form.get("MessageSid", ""), form.get("From", "")
        if not sid or not phone:
            raise HTTPException(422, "MessageSid and From are required")
        await sender.inbound(tenant, phone, form.get("Body", ""), message_id=sid)
        return Response(TWIML_EMPTY, media_type="application/xml")

    @http.post("/v1/{tenant}/twilio/status", status_code=204, tags=["twilio"])
    async def twilio_status(tenant: str, request: Request) -> Response:
        form = await signed_form(tenant, request)
        sid, status = form.get("MessageSid", ""), form.get("MessageStatus", "")
        if not sid or not status:
            raise HTTPException(422, "MessageSid and MessageStatus are required")
        if not await sender.provider_status(tenant, sid, status):
            raise HTTPException(404, "unknown message")
        return Response(status_code=204)
