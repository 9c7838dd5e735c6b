"""ICE servers for clients: STUN URLs and short-lived TURN credentials (coturn REST scheme).

coturn's ``use-auth-secret`` mode checks ``username = "<expiry unix time>:<user>"`` and
``credential = base64(HMAC-SHA1(static-auth-secret, username))``, so the gateway mints
credentials without talking to the TURN server. They reach clients as WHIP ``Link``
headers (RFC 9725 §4.6) and as JSON from ``GET /v1/ice-servers``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

__all__ = ["IceServer", "TurnCredentials", "ice_servers", "link_header", "turn_credentials"]


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    username: str
    credential: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class IceServer:
    urls: str
    username: str | None = None
    credential: str | None = None

    def as_json(self) -> dict[str, str]:
        """The shape ``RTCPeerConnection({iceServers})`` takes in browsers."""
        out = {"urls": self.urls}
        if self.username is not None and self.credential is not None:
            out |= {
                "username": self.username,
                "credential": self.credential,
                "credentialType": "password",
            }
        return out


def turn_credentials(
    secret: str, user: str, *, ttl_s: int, now: float | None = None
) -> TurnCredentials:
    expires_at = int(now if now is not None else time.time()) + ttl_s
    username = f"{expires_at}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(username, base64.b64encode(digest).decode(), expires_at)


def ice_servers(
    *,
    stun_urls: list[str],
    turn_urls: list[str],
    turn_secret: str | None,
    user: str,
    ttl_s: int,
    now: float | None = None,
) -> list[IceServer]:
    """STUN servers as they are; TURN servers only when a shared secret is configured."""
    servers = [IceServer(url) for url in stun_urls]
    if turn_secret and turn_urls:
        creds = turn_credentials(turn_secret, user, ttl_s=ttl_s, now=now)
        servers += [IceServer(url, creds.username, creds.credential) for url in turn_urls]
    return servers


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def link_header(server: IceServer) -> str:
    """One WHIP ``Link`` header value, e.g. ``<turn:h:3478>; rel="ice-server"; ...``."""
    value = f'<{server.urls}>; rel="ice-server"'
    if server.username is not None and server.credential is not None:
        value += (
            f"; username={_quote(server.username)}; credential={_quote(server.credential)}"
            '; credential-type="password"'
        )
    return value
