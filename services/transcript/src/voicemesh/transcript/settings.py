"""Settings of the transcript service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from voicemesh.common import ServiceSettings
from voicemesh.common.runtime.auth import ApiKeySettings

__all__ = ["TranscriptSettings"]


class TranscriptSettings(ServiceSettings, ApiKeySettings):
    service_name: str = "transcript"
    http_port: int = 8087
