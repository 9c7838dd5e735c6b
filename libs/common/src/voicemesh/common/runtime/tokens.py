"""Call tokens: short-lived JWTs bound to one tenant and one call.

The push service puts one in the VoIP push; the gateway accepts it once to connect the
call (it records the token id in Redis to refuse a replay). Signed with HS256 and the
deployment's ``VOICEMESH_CALL_TOKEN_SECRET``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from voicemesh.common.contracts.errors import Unauthorized

__all__ = ["CallClaims", "issue_call_token", "verify_call_token"]

ALGORITHM = "HS256"
AUDIENCE = "voicemesh-gateway"
ISSUER = "voicemesh"
DEFAULT_TTL_S = 120


@dataclass(frozen=True)
class CallClaims:
    tenant: str
    call_id: str
    token_id: str
    expires_at: int
    user_id: str | None = None


def issue_call_token(
    secret: str,
    tenant: str,
    call_id: str,
    *,
    ttl_s: int = DEFAULT_TTL_S,
    user_id: str | None = None,
    now: float | None = None,
) -> tuple[str, CallClaims]:
    if len(secret) < 32:
        raise ValueError("the call token secret must be at least 32 characters")
    issued = int(now if now is not None else time.time())
    claims = CallClaims(tenant, call_id, uuid.uuid4().hex, issued + ttl_s, user_id)
    payload: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": issued,
        "nbf": issued - 5,
        "exp": claims.expires_at,
        "jti": claims.token_id,
        "tenant": tenant,
        "call": call_id,
    }
    if user_id:
        payload["sub"] = user_id
    return jwt.encode(payload, secret, algorithm=ALGORITHM), claims


def verify_call_token(
    secret: str, token: str, *, tenant: str | None = None, call_id: str | None = None
) -> CallClaims:
    """Check signature, expiry, audience and binding; raise ``Unauthorized`` with why."""
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "jti", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("call token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid call token: {exc}") from exc
    claims = CallClaims(
        tenant=str(payload.get("tenant", "")),
        call_id=str(payload.get("call", "")),
        token_id=str(payload["jti"]),
        expires_at=int(payload["exp"]),
        user_id=payload.get("sub"),
    )
    if tenant is not None and claims.tenant != tenant:
        raise Unauthorized("call token is for another tenant")
    if call_id is not None and claims.call_id != call_id:
        raise Unauthorized("call token is for another call")
    return claims
