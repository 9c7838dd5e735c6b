"""Settings of the sms service (``VOICEMESH_*`` environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from voicemesh.common import ServiceSettings
from voicemesh.common.runtime.auth import ApiKeySettings

__all__ = ["SmsSettings"]


class SmsSettings(ServiceSettings, ApiKeySettings):
    """Provider choice and limits. Twilio credentials are secrets and never logged."""

    service_name: str = "sms"
    http_port: int = 8085

    provider: Literal["outbox", "twilio"] = "outbox"
    sender_id: str = Field(default="+15550000000", description="the From number")
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_base_url: str = "https://api.twilio.com"
    twilio_timeout_s: float = Field(default=10.0, gt=0)
    public_url: str = Field(
        default="", description="this service's URL as Twilio calls it (webhook signatures)"
    )

    rate_limit: int = Field(default=60, ge=1, description="texts per tenant per window")
    rate_window_s: int = Field(default=60, ge=1)
    tool_workers: int = Field(default=16, ge=1, le=256)
