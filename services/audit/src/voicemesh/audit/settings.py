"""Settings of the audit service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from voicemesh.common import ServiceSettings

__all__ = ["AuditSettings"]


class AuditSettings(ServiceSettings):
    service_name: str = "audit"
    http_port: int = 8086
    api_keys: SecretStr = Field(
        default=SecretStr(""), description="'tenant:key,...' keys for the HTTP API"
    )
    api_keys_file: Path | None = Field(
        default=None, description="a file with one 'tenant:key' per line (a mounted Secret)"
    )
    batch_size: int = Field(default=250, ge=1, le=5000, description="events per pull")
    batch_timeout_s: float = Field(
        default=0.2, gt=0, le=10, description="longest wait to fill a batch (adds latency)"
    )
