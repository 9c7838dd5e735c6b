"""Settings of the audit service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

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
    audit_signing_key: SecretStr | None = Field(
        default=None, description="PEM of the Ed25519 key that signs chain heads"
    )
    audit_signing_key_file: Path | None = Field(
        default=None, description="a file holding that PEM (a mounted Secret)"
    )
    head_interval_s: float = Field(
        default=60.0, gt=0, le=3600, description="how often moved chain heads are signed"
    )

    def signing_key_pem(self) -> bytes | None:
        """The signing key's PEM, from the variable or the file; ``None`` if neither is set."""
        if self.audit_signing_key is not None:
            return self.audit_signing_key.get_secret_value().encode()
        if self.audit_signing_key_file is not None:
            return self.audit_signing_key_file.read_bytes()
        return None
