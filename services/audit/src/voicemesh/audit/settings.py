"""Settings of the audit service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from voicemesh.common import ServiceSettings
from voicemesh.common.runtime.auth import ApiKeySettings

__all__ = ["AuditSettings"]


class AuditSettings(ServiceSettings, ApiKeySettings):
    service_name: str = "audit"
    http_port: int = 8086
    batch_size: int = Field(default=250, ge=1, le=5000, description="events per pull")
    batch_timeout_s: float = Field(
        default=0.2, gt=0, le=10, description="longest wait to fill a batch (adds latency)"
    )
