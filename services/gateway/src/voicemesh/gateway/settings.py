"""Settings of the gateway service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from voicemesh.common import ServiceSettings
from voicemesh.common.runtime.auth import ApiKeySettings

__all__ = ["GatewaySettings"]


class GatewaySettings(ServiceSettings, ApiKeySettings):
    service_name: str = "gateway"
    http_port: int = 8080

    call_token_secret: SecretStr = Field(
        default=SecretStr(""),
        description="HS256 secret shared with push; at least 32 characters",
    )
    call_token_ttl_s: int = Field(default=120, gt=0, le=3600)

    # -- workers: several gateway processes (pods) share Redis --------------------------------
    gateway_public_url: str = Field(
        default="",
        description="the origin clients reach every worker at (the Ingress), e.g. "
        "https://voice.example.com: whip_url and Location are built from it; "
        "empty: worker_url (one worker serving its own address)",
    )
    worker_id: str = Field(default="", description="unique per process; empty: host and pid")
    worker_url: str = Field(
        default="",
        description="this process's internal base URL: the other workers forward the "
        "signaling of the calls it holds to it; empty: http://<http_host>:<http_port>",
    )
    forward_timeout_s: float = Field(
        default=15.0, gt=0, le=120, description="how long a forwarded request may take"
    )
    max_calls: int = Field(
        default=8,
        ge=1,
        le=64,
        description="admission limit per process (measured by bench/gateway.py)",
    )
    retry_after_s: int = Field(default=5, ge=1)
    worker_lost_s: float = Field(
        default=15.0,
        ge=2,
        le=600,
        description="a worker silent this long has died: a live worker ends its calls",
    )

    # -- per-tenant signaling rate limits (Redis sliding window, shared by all workers) -------
    call_rate_limit: int = Field(
        default=120, ge=1, description="POST /v1/{tenant}/calls per tenant per window"
    )
    offer_rate_limit: int = Field(
        default=120, ge=1, description="WHIP offers (new calls) per tenant per window"
    )
    rate_window_s: float = Field(default=60.0, gt=0, le=3600)

    # -- TURN (coturn REST API credentials) --------------------------------------------------
    turn_secret: SecretStr | None = Field(
        default=None, description="coturn static-auth-secret; unset: no TURN servers"
    )
    turn_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated, e.g. turn:turn.example.com:3478?transport=udp,"
        "turns:turn.example.com:443?transport=tcp",
    )
    turn_ttl_s: int = Field(default=3600, ge=60, le=86400)
    stun_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # -- the media address of this worker (ICE host candidates) ------------------------------
    media_advertise_ip: str = Field(
        default="",
        description="the IP address this worker's ICE host candidates carry: its pod IP, "
        "or the public IP of a 1:1 NAT in front of media_bind_ip; empty: the bound addresses",
    )
    media_bind_ip: str = Field(
        default="",
        description="the local address ICE host candidates are gathered on; "
        "empty: media_advertise_ip when set, else every interface",
    )

    # -- media and call timing ---------------------------------------------------------------
    receive_prefetch: int = Field(
        default=1,
        ge=0,
        le=4,
        description="aiortc audio jitter-buffer prefetch in frames (aiortc's default is 4)",
    )
    opus_bitrate: int = Field(
        default=32000, ge=6000, le=510000, description="bit/s of the mono Opus sent to callers"
    )
    playout_prefill_ms: int = Field(default=20, ge=0, le=500)
    playout_max_ms: int = Field(default=2000, ge=100, le=10000)
    reconnect_grace_s: float = Field(default=15.0, ge=0)
    connect_timeout_s: float = Field(default=20.0, gt=0)
    media_timeout_s: float = Field(default=10.0, gt=0)
    max_duration_s: float = Field(default=3600.0, gt=0)
    max_sdp_bytes: int = Field(default=32 * 1024, ge=1024)

    demo_enabled: bool = Field(
        default=True, description="/demo may create calls for the demo tenants without a key"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default=["*"],
        description="origins whose pages may call the API from a browser (comma-separated); "
        "empty: none, the production default",
    )

    @field_validator("media_advertise_ip", "media_bind_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return str(ipaddress.ip_address(value.strip())) if value.strip() else ""

    @model_validator(mode="after")
    def _same_family(self) -> GatewaySettings:
        bound, advertised = self.media_bind_ip, self.media_advertise_ip
        if bound and advertised:
            if ipaddress.ip_address(bound).version != ipaddress.ip_address(advertised).version:
                raise ValueError("media_bind_ip and media_advertise_ip must both be IPv4 or IPv6")
        return self

    @field_validator("turn_urls", "stun_urls", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value
