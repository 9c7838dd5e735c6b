"""Settings of the push service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from voicemesh.common import ServiceSettings
from voicemesh.common.runtime.auth import ApiKeySettings

__all__ = ["PushSettings"]


class PushSettings(ServiceSettings, ApiKeySettings):
    service_name: str = "push"
    http_port: int = 8081

    apns_host: str | None = Field(
        default=None,
        description="APNs host; unset means Apple's host for each device's environment",
    )
    apns_port: int = Field(default=443, ge=1, le=65535)
    apns_ca_file: str | None = Field(
        default=None, description="CA bundle that signs the APNs host's certificate"
    )
    apns_credentials_dir: Path | None = Field(
        default=None,
        description="directory of <tenant>.json APNs credentials (a mounted Secret)",
    )
    apns_credentials: SecretStr | None = Field(
        default=None, description='JSON {"<tenant>": {credentials}}, for when no directory'
    )
    apns_timeout_s: float = Field(default=3.0, gt=0, description="per APNs request")
    apns_connections: int = Field(default=1, ge=1, le=16, description="per tenant and env")
    apns_retry_base_s: float = Field(default=0.2, gt=0)
    apns_retry_max_s: float = Field(default=2.0, gt=0)

    call_token_secret: SecretStr = SecretStr("")
    gateway_public_url: str = "http://127.0.0.1:8080"
    ring_window_s: float = Field(default=30.0, gt=0, le=300, description="longest ring")
    ring_windows: str = Field(default="", description="per-tenant windows: 'tenant:seconds,...'")
    ring_claim_lease_s: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="how long a replica's claim on a passed ring deadline lasts before "
        "another replica may take the missed call over",
    )
    workers: int = Field(
        default=64, ge=1, le=256, description="per tenant: lifecycle events in flight at once"
    )
    device_cache_ttl_s: int = Field(default=300, ge=1)
    device_rate_limit: int = Field(
        default=60, ge=1, description="device registrations per tenant per window"
    )
    device_rate_window_s: float = Field(default=60.0, gt=0, le=3600)
    missed_call_text: str = "You missed a call from {caller}. We'll try again, or reply to this."

    def ring_window_for(self, tenant: str) -> float:
        for item in filter(None, (p.strip() for p in self.ring_windows.split(","))):
            name, _, seconds = item.partition(":")
            if name.strip() == tenant and seconds:
                return min(float(seconds), 300.0)
        return self.ring_window_s
