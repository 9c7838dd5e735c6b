"""Settings of the transcript service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from voicemesh.common import ServiceSettings

__all__ = ["TranscriptSettings"]


class TranscriptSettings(ServiceSettings):
    service_name: str = "transcript"
    http_port: int = 8087
    api_keys: SecretStr = Field(
        default=SecretStr(""), description="'tenant:key,...' keys for the HTTP API"
    )
    api_keys_file: Path | None = Field(
        default=None, description="a file with one 'tenant:key' per line (a mounted Secret)"
    )
