"""What the gateway reads from a request body: capped in size, of the media type it expects.

``NewCall`` is the optional JSON body of ``POST /v1/{tenant}/calls``: the caller's E.164
number, which only the tenant's API key may vouch for.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voicemesh.common.contracts.tools import PHONE_PATTERN

__all__ = ["JSON", "SDP", "NewCall", "new_call", "read_body", "require_type"]

log = logging.getLogger(__name__)

SDP = "application/sdp"
JSON = "application/json"
#: A call request's body holds one phone number.
MAX_CALL_BODY = 1024


class NewCall(BaseModel):
    """The optional body of ``POST /v1/{tenant}/calls`` (with the tenant's API key only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phone: str | None = Field(
        default=None,
        pattern=PHONE_PATTERN,
        description="the caller's E.164 number, vouched for by the tenant backend",
    )


def require_type(request: Request, media_type: str) -> None:
    """415 unless the request's ``Content-Type`` is ``media_type`` (parameters aside)."""
    given = request.headers.get("content-type") or ""
    if given.split(";")[0].strip().lower() != media_type:
        raise HTTPException(415, f"the body must be {media_type}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        log.info("refused a request: body of %s bytes over the %d limit", declared, limit)
        raise HTTPException(413, f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            log.info("refused a request: body over the %d-byte limit", limit)
            raise HTTPException(413, f"body larger than {limit} bytes")
    return bytes(body)


async def new_call(request: Request) -> NewCall:
    """A call request's body: none, or JSON naming at most the caller's phone (422 if not)."""
    body = await read_body(request, MAX_CALL_BODY)
    if not body.strip():
        return NewCall()
    require_type(request, JSON)
    try:
        return NewCall.model_validate_json(body)
    except ValidationError as exc:
        # The reason names the field, never echoes the value.
        problems = [
            "phone must be an E.164 number such as +15551234567"
            if e["loc"] == ("phone",) and e["type"] in {"string_pattern_mismatch", "string_type"}
            else f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise HTTPException(422, "; ".join(problems)) from None
