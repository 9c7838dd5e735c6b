"""Settings of the crm service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from voicemesh.common import ServiceSettings
from voicemesh.common.runtime.auth import ApiKeySettings

__all__ = ["CrmSettings"]


class CrmSettings(ServiceSettings, ApiKeySettings):
    service_name: str = "crm"
    http_port: int = 8083
    seed_demo_data: bool = Field(
        default=True,
        description="give empty real-estate, legal and insurance tenants sample records",
    )
    tool_workers: int = Field(default=32, ge=1, le=256)
    lookup_cache_ttl_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="how long a contact lookup is served from memory; other replicas' writes "
        "show after at most this long (this process's own writes at once); 0 turns it off",
    )
