"""Settings of the gateway service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
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

    # -- workers: several gateway processes on one host share Redis --------------------------
    worker_id: str = Field(default="", description="unique per process; empty: host and pid")
    worker_url: str = Field(
        default="",
        description="this process's own base URL (WHIP sessions are pinned to it); "
        "empty: http://<http_host>:<http_port>",
    )
    max_calls: int = Field(
        default=8,
        ge=1,
        le=64,
        description="admission limit per process (measured by bench/gateway.py)",
    )
    retry_after_s: int = Field(default=5, ge=1)

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

    @field_validator("turn_urls", "stun_urls", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value
