"""Settings shared by every service, read from ``VOICEMESH_*`` environment variables.

Each service subclasses ``ServiceSettings`` with its own fields; settings are loaded only in
a service's entry point and passed down, never read from module globals.
Secrets are ``SecretStr`` so they never appear in a repr or a log line.
"""

from __future__ import annotations

import logging
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from voicemesh.common.contracts.streams import STREAMS, StreamLimits
from voicemesh.common.contracts.tenancy import TenantRegistry, Vertical, validate_tenant_id

__all__ = ["NatsSettings", "ServiceSettings", "StreamSettings"]


class NatsSettings(BaseSettings):
    """Where NATS is and who this process is to it: what ``runtime.connection.connect`` needs.

    ``tenant`` is the tenant a per-tenant process serves; ``"*"`` serves every tenant (the
    local stack, the shared edge services, operator tools).
    """

    model_config = SettingsConfigDict(
        env_prefix="VOICEMESH_", extra="ignore", populate_by_name=True
    )

    nats_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        validation_alias=AliasChoices("VOICEMESH_NATS_URLS", "VOICEMESH_NATS_URL"),
        description="comma-separated NATS server URLs",
    )
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_creds_file: str | None = None
    nats_tls_ca_file: str | None = Field(
        default=None, description="CA bundle that signs the NATS servers' certificates"
    )
    nats_tls_cert_file: str | None = Field(default=None, description="client certificate (mTLS)")
    nats_tls_key_file: str | None = None

    tenant: str = "*"

    @field_validator("nats_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, value: str) -> str:
        return value if value == "*" else validate_tenant_id(value)


class ServiceSettings(NatsSettings):
    """Fields every voicemesh service has.

    ``tenant`` is the tenant a per-tenant pod serves; ``"*"`` serves every tenant in
    ``tenants`` (the local stack and the shared edge services do this).
    """

    service_name: str = "voicemesh"

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: SecretStr = Field(
        default=SecretStr("sqlite+aiosqlite:///voicemesh.db"),
        validation_alias=AliasChoices("VOICEMESH_DATABASE_URL", "DATABASE_URL"),
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("VOICEMESH_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/HTTP base URL, e.g. http://jaeger:4318; unset exports nothing",
    )

    vertical: Vertical | None = None
    tenants: Annotated[str, NoDecode] = Field(
        default="",
        description="'tenant:vertical,...'; empty means the six demo tenants",
    )

    log_level: str = "INFO"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    graceful_timeout: float = Field(default=10.0, gt=0)

    # -- what the HTTP API shows to anyone: open for ``make run``, closed in the manifests --
    public_docs: bool = Field(
        default=True, description="serve /docs, /redoc and /openapi.json without credentials"
    )
    public_metrics: bool = Field(
        default=True, description="serve /metrics without credentials (unless metrics_token)"
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="when set, /metrics needs 'Authorization: Bearer <token>' (Prometheus "
        "scrape authorization), whatever public_metrics says",
    )

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}")
        return level

    def tenant_registry(self) -> TenantRegistry:
        """The tenants this process serves."""
        registry = TenantRegistry.parse(self.tenants) if self.tenants else TenantRegistry.demo()
        if self.tenant != "*":
            own = registry.get(self.tenant)
            if own is None:
                if self.vertical is None:
                    raise ValueError(
                        f"tenant {self.tenant!r} is not in VOICEMESH_TENANTS and "
                        "VOICEMESH_VERTICAL is not set"
                    )
                return TenantRegistry.parse(f"{self.tenant}:{self.vertical.value}")
            return TenantRegistry([own])
        return registry


class StreamSettings(BaseSettings):
    """The JetStream limits ``voicemesh streams apply`` sets, over the defaults of
    ``contracts.streams`` (JSON objects keyed by stream name), e.g.
    ``VOICEMESH_STREAM_MAX_BYTES='{"TRANSCRIPTS": 4294967296}'``."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_STREAM_", extra="ignore")

    max_bytes: dict[str, int] = Field(default_factory=dict, description="bytes per stream")
    max_msgs_per_subject: dict[str, int] = Field(
        default_factory=dict,
        description="messages per subject: per tenant on PUSH, SMS, DLQ (and EVENTS, per "
        "event type), per call on CALLS and TRANSCRIPTS",
    )

    @field_validator("max_bytes", "max_msgs_per_subject")
    @classmethod
    def _known_streams(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(STREAMS))
        if unknown:
            raise ValueError(f"no such streams: {unknown}; one of {sorted(STREAMS)}")
        return value

    def limits(self) -> dict[str, StreamLimits]:
        """Every stream's limits: the defaults, with what is set here."""
        return {
            name: StreamLimits(
                self.max_bytes.get(name, spec.limits.max_bytes),
                self.max_msgs_per_subject.get(name, spec.limits.max_msgs_per_subject),
                spec.limits.discard_new_per_subject,
            )
            for name, spec in STREAMS.items()
        }
