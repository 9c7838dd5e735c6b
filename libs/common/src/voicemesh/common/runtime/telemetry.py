"""Tracing and metrics, wired once for every service.

``setup_telemetry`` builds the tracer provider (OTLP/HTTP export when an endpoint is set,
nothing exported otherwise), a Prometheus registry, and the FastStream middlewares that
carry W3C trace context in NATS headers. Span names and metric labels use
``subjects.low_cardinality``: never a concrete tenant or call id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faststream.nats.opentelemetry.provider import (
    NatsBatchTelemetrySettingsProvider,
    NatsTelemetrySettingsProvider,
)
from faststream.nats.prometheus.provider import (
    BatchNatsMetricsSettingsProvider,
    NatsMetricsSettingsProvider,
)
from faststream.opentelemetry.middleware import TelemetryMiddleware
from faststream.prometheus.middleware import PrometheusMiddleware
from nats.aio.msg import Msg
from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from voicemesh.common.contracts.subjects import low_cardinality

if TYPE_CHECKING:
    from faststream.message import StreamMessage
    from faststream.response import PublishCommand

__all__ = ["Telemetry", "setup_telemetry", "trace_context_from"]


class _LowCardTracing(NatsTelemetrySettingsProvider):
    def get_consume_destination_name(self, msg: StreamMessage[Msg]) -> str:
        return low_cardinality(msg.raw_message.subject)

    def get_publish_destination_name(self, cmd: PublishCommand) -> str:
        return low_cardinality(cmd.destination)


class _LowCardBatchTracing(NatsBatchTelemetrySettingsProvider):
    def get_consume_destination_name(self, msg: StreamMessage[list[Msg]]) -> str:
        return low_cardinality(msg.raw_message[0].subject)

    def get_publish_destination_name(self, cmd: PublishCommand) -> str:
        return low_cardinality(cmd.destination)


def _tracing_provider(msg: Any) -> Any:
    if isinstance(msg, Sequence):
        return _LowCardBatchTracing()
    if isinstance(msg, Msg) or msg is None:
        return _LowCardTracing()
    return None


class _LowCardMetrics(NatsMetricsSettingsProvider):
    def get_consume_attrs_from_message(self, msg: StreamMessage[Msg]) -> Any:
        attrs = super().get_consume_attrs_from_message(msg)
        attrs["destination_name"] = low_cardinality(attrs["destination_name"])
        return attrs

    def get_publish_destination_name_from_cmd(self, cmd: PublishCommand) -> str:
        return low_cardinality(cmd.destination)


class _LowCardBatchMetrics(BatchNatsMetricsSettingsProvider):
    def get_consume_attrs_from_message(self, msg: StreamMessage[list[Msg]]) -> Any:
        attrs = super().get_consume_attrs_from_message(msg)
        attrs["destination_name"] = low_cardinality(attrs["destination_name"])
        return attrs

    def get_publish_destination_name_from_cmd(self, cmd: PublishCommand) -> str:
        return low_cardinality(cmd.destination)


def _metrics_provider(msg: Any) -> Any:
    if isinstance(msg, Sequence):
        return _LowCardBatchMetrics()
    if isinstance(msg, Msg) or msg is None:
        return _LowCardMetrics()
    return None


@dataclass
class Telemetry:
    """What a service needs to be observable: spans, a tracer and a metrics registry."""

    service_name: str
    tracer_provider: TracerProvider
    registry: CollectorRegistry
    middlewares: list[Any] = field(default_factory=list)

    @property
    def tracer(self) -> Tracer:
        return self.tracer_provider.get_tracer(f"voicemesh.{self.service_name}")

    def shutdown(self) -> None:
        """Flush and stop exporting; safe to call twice."""
        self.tracer_provider.shutdown()


def setup_telemetry(
    service_name: str,
    *,
    otlp_endpoint: str | None = None,
    resource_attributes: Mapping[str, str] | None = None,
    span_processors: Sequence[Any] = (),
) -> Telemetry:
    """Build tracing and metrics for one service process.

    With ``otlp_endpoint`` (an OTLP/HTTP base URL such as ``http://jaeger:4318``) spans are
    batched and exported there; without it spans are recorded but go nowhere.
    """
    attrs = {"service.name": service_name, "service.namespace": "voicemesh"}
    attrs.update(resource_attributes or {})
    provider = TracerProvider(resource=Resource.create(attrs))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    for processor in span_processors:
        provider.add_span_processor(processor)

    registry = CollectorRegistry()
    # The NATS middlewares, with settings providers that name spans and label metrics by
    # subject pattern instead of by concrete subject.
    tracing: TelemetryMiddleware[Any] = TelemetryMiddleware(
        settings_provider_factory=_tracing_provider, tracer_provider=provider
    )
    metrics: PrometheusMiddleware[Any, Any] = PrometheusMiddleware(
        settings_provider_factory=_metrics_provider, registry=registry, app_name=service_name
    )
    return Telemetry(service_name, provider, registry, [tracing, metrics])


def trace_context_from(headers: Mapping[str, str] | None) -> Any:
    """The OTel context carried in NATS message headers (for raw nats-py subscribers)."""
    return propagate.extract(dict(headers or {}))
