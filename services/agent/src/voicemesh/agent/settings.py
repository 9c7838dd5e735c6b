"""Settings of the agent service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from voicemesh.common import ServiceSettings

__all__ = ["AgentSettings"]


class AgentSettings(ServiceSettings):
    service_name: str = "agent"
    http_port: int = 8082

    #: offline (embedded, no key), openai (transcription + chat with tools + speech) or
    #: openai-realtime (speech to speech over the Realtime WebSocket)
    agent_provider: Literal["offline", "openai", "openai-realtime"] = "offline"
    #: extra directories with ``<profile>.yaml`` files (a seventh vertical, a tenant's own)
    agent_profile_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: ``tenant:profile,...``: a tenant's profile when it is not its vertical's
    agent_profiles: str = ""
    #: every provider step (dialog, speech) must answer within this, or the caller hears
    #: an apology and is handed to a person
    agent_provider_timeout_s: float = Field(default=8.0, gt=0)
    agent_sample_rate: Literal[16000, 24000] = 16000

    #: the OpenAI providers: the official ``openai`` package, pointed at ``openai_base_url``
    #: (None: api.openai.com; tests use ``python -m voicemesh.openaisim``)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_chat_model: str = "gpt-4o-mini"
    openai_transcribe_model: str = "gpt-4o-mini-transcribe"
    openai_speech_model: str = "gpt-4o-mini-tts"
    openai_voice: str = "alloy"
    openai_realtime_model: str = "gpt-realtime"

    @model_validator(mode="after")
    def _openai_needs_a_key(self) -> AgentSettings:
        if self.agent_provider != "offline" and not (
            self.openai_api_key and self.openai_api_key.get_secret_value()
        ):
            raise ValueError(f"VOICEMESH_OPENAI_API_KEY is required by {self.agent_provider}")
        return self

    @field_validator("agent_profile_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p.strip()) for p in value.split(",") if p.strip()]
        return value

    def profile_for(self, tenant: str, vertical: str) -> str:
        for item in filter(None, (p.strip() for p in self.agent_profiles.split(","))):
            name, _, profile = item.partition(":")
            if name == tenant and profile:
                return profile
        return vertical
