"""The agent's tools over NATS request/reply: ``ToolServer`` and ``ToolClient``.

A tool is ``vm.<tenant>.tool.<service>.<name>``. The request body is a ``ToolRequest`` whose
``arguments`` are validated by the tool's own argument model (``TOOLS``); the reply is a
``ToolResult`` carrying either the tool's result model as a dict or a typed ``ToolError``.
A tool never answers with silence: bad arguments give ``invalid``, a slow handler gives
``timeout``, and a client that hears nothing in time gets a ``timeout`` result too.

Every call is traced (one ``tool <service>.<name>`` span, never arguments as attributes) and
recorded afterwards as a ``ToolEvent`` on ``vm.<tenant>.event.tool``. Those records (and a
tool service's own domain events, through ``ToolServer.publish_event``) are published to
JetStream without holding up the answer: acks are checked as they arrive, and a missing one is
logged, never lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.errors import DeadlineExceeded
from voicemesh.common.contracts.events import (
    Envelope,
    ToolError,
    ToolErrorCode,
    ToolEvent,
    ToolRequest,
    ToolResult,
)
from voicemesh.common.contracts.tenancy import Tenant
from voicemesh.common.contracts.tools import (
    DEFAULT_TIMEOUT_S,
    TOOLS,
    ToolArgs,
    ToolCallError,
    ToolFailure,
    ToolOutput,
    ToolSpec,
    error_for,
)
from voicemesh.common.runtime.publisher import trace_headers
from voicemesh.common.runtime.telemetry import trace_context_from

if TYPE_CHECKING:
    from voicemesh.common.runtime.service import MeshService

__all__ = ["ToolCall", "ToolClient", "ToolServer"]

log = logging.getLogger(__name__)

#: How much longer than the tool's own deadline a client waits, so the server's typed
#: ``timeout`` answer (not the client's guess) is what the caller sees.
CLIENT_GRACE_S = 1.0

A = TypeVar("A", bound=ToolArgs)
R = TypeVar("R", bound=ToolOutput)


@dataclass(frozen=True)
class ToolCall:
    """What a tool handler knows about the call besides its arguments.

    A request made on a call (``call_id`` set: the agent's) acts for that call's caller
    only, whatever its model asked: its handler binds recipients and contacts to the call,
    and the arguments bound to the call (``ToolSpec.call_bound``) were already refused. A
    request with no call is a tenant backend's, with the tool's full rights."""

    tenant: Tenant
    request: ToolRequest

    @property
    def call_id(self) -> str | None:
        return self.request.call_id

    @property
    def on_call(self) -> bool:
        return self.request.call_id is not None


ToolHandler = Callable[[ToolCall, A], Awaitable[R]]


class ToolServer:
    """Serves one service's tools on ``vm.<tenant>.tool.<service>.*``.

    One core-NATS subscription per process in the queue group ``<service>-tools``, so
    replicas share the load; up to ``max_workers`` calls run at once. Each call is validated,
    run under its tool's deadline, answered, then recorded as a ``ToolEvent``.

    The subscription is raw nats-py on the service broker's connection, not a FastStream
    subscriber: a request/reply hop must always answer, and the broker's middlewares
    (dead-lettering, tenant fencing) would drop a bad request silently. It also skips
    FastStream's per-message overhead, the larger part of a tool's round trip. Trace context
    is taken from the request headers; metrics are ``voicemesh_tool_*``. The ``ToolEvent``
    that records a call, and the events a handler hands to ``publish_event``, go to
    JetStream without waiting for the ack on the call's path (``JetStreamPublisher.send``).
    """

    def __init__(self, service: MeshService, *, max_workers: int = 32) -> None:
        self._service = service
        self._name = service.name
        self._handlers: dict[str, tuple[ToolSpec[Any, Any], ToolHandler[Any, Any]]] = {}
        self._subject = subjects.tool(service.settings.tenant, service.name, "*")
        self._queue = f"{service.name}-tools"
        self._slots = asyncio.Semaphore(max_workers)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None
        self._events = service.events
        # Looked up once: ``Telemetry.tracer`` asks the provider for a new tracer each time.
        self._tracer: Tracer = service.telemetry.tracer
        registry = service.telemetry.registry
        self._calls = Counter(
            "voicemesh_tool_calls",
            "Tool calls served, by tool and outcome (ok or the error code)",
            ["tool", "outcome"],
            registry=registry,
        )
        self._latency = Histogram(
            "voicemesh_tool_duration_seconds",
            "Time from request to answer, by tool",
            ["tool"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

        async def start() -> None:
            await self.start()

        async def stop() -> None:
            await self.stop()

        # After the broker connects (its connection carries the subscription), and before it
        # drains on shutdown (in-flight calls still need it to answer and record).
        service.faststream.after_startup(start)
        service.faststream.on_shutdown(stop)

    def tool(self, spec: ToolSpec[A, R]) -> Callable[[ToolHandler[A, R]], ToolHandler[A, R]]:
        """Decorator: serve ``spec`` with the decorated handler."""

        def register(handler: ToolHandler[A, R]) -> ToolHandler[A, R]:
            self.register(spec, handler)
            return handler

        return register

    def register(self, spec: ToolSpec[A, R], handler: ToolHandler[A, R]) -> None:
        if spec.service != self._name:
            raise ValueError(f"tool {spec.service}.{spec.name} does not belong to {self._name}")
        self._handlers[spec.name] = (spec, handler)

    @property
    def tools(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def in_flight(self) -> int:
        """Calls being served right now."""
        return len(self._in_flight)

    async def start(self) -> None:
        if self._subscription is not None:
            return
        connection: NatsClient = self._service.broker.connection
        self._subscription = await connection.subscribe(
            self._subject, queue=self._queue, cb=self._on_message
        )
        # Until the server has the subscription a request gets "no responders": the service
        # is not ready before this round trip.
        await connection.flush()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking calls, let queued ones run, wait for in-flight ones; idempotent."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):  # a closed connection has nothing to drain
                await subscription.drain()  # type: ignore[no-untyped-call]  # nats-py lacks hints
        if self._in_flight:
            wait = timeout if timeout is not None else self._service.settings.graceful_timeout
            _done, pending = await asyncio.wait(set(self._in_flight), timeout=wait)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._events.drain(self._service.settings.graceful_timeout)

    async def publish_event(self, event: Envelope, subject: str) -> None:
        """Publish a handler's domain event to JetStream without waiting for its ack.

        For events that follow a committed change (an appointment booked): the answer to the
        caller is not held up by JetStream, the event keeps its place in this connection's
        order, and a refusal or a missing ack is logged. Deduplicated by ``event_id``.
        """
        await self._events.send(event, subject)

    async def _on_message(self, msg: Msg) -> None:
        # nats-py delivers one message at a time per subscription; waiting for a free slot
        # here is the backpressure that bounds concurrent calls.
        await self._slots.acquire()
        task = asyncio.create_task(self._serve(msg), name=f"tool {self._name}")
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("tool task failed: %r", task.exception())

    async def _serve(self, raw: Msg) -> None:
        started = time.perf_counter()
        name = raw.subject.rsplit(".", 1)[-1]
        label = name if name in self._handlers else "unknown"
        tenant_id = subjects.tenant_of(raw.subject) or "unknown"
        request: ToolRequest | None = None
        with self._tracer.start_as_current_span(
            f"tool {self._name}.{label}",
            context=trace_context_from(raw.headers),
            kind=SpanKind.SERVER,
            attributes={"tool.service": self._name, "tool.name": label, "tenant": tenant_id},
        ) as span:
            try:
                request = ToolRequest.model_validate_json(raw.data)
                output = await self._dispatch(tenant_id, name, request)
                result = ToolResult(
                    tenant=tenant_id,
                    call_id=request.call_id,
                    source=self._name,
                    request_id=request.event_id,
                    ok=True,
                    result=output.model_dump(mode="json"),
                )
            except Exception as exc:
                error = error_for(exc)
                if error.code is ToolErrorCode.INTERNAL:
                    log.exception("tool %s.%s failed unexpectedly", self._name, label)
                result = ToolResult(
                    tenant=tenant_id,
                    call_id=request.call_id if request else None,
                    source=self._name,
                    request_id=request.event_id if request else "",
                    ok=False,
                    error=error,
                )
                span.set_attribute("tool.error_code", error.code.value)
                span.set_status(Status(StatusCode.ERROR, error.code.value))
            span.set_attribute("tool.ok", result.ok)
            if raw.reply:
                await raw.respond(result.model_dump_json().encode())
            outcome = "ok" if result.error is None else result.error.code.value
            self._calls.labels(label, outcome).inc()
            self._latency.labels(label).observe(time.perf_counter() - started)
            if request is not None and tenant_id in self._service.tenants:
                # Inside the span: the record carries the call's trace context.
                await self._record(request, result, started)

    async def _dispatch(self, tenant_id: str, name: str, request: ToolRequest) -> ToolOutput:
        tenant = self._service.tenants.get(tenant_id)
        if tenant is None:
            raise ToolFailure(ToolErrorCode.FORBIDDEN, f"tenant {tenant_id!r} is not served here")
        if request.tenant != tenant_id:
            raise ToolFailure(ToolErrorCode.FORBIDDEN, "the request's tenant is not the subject's")
        if request.service != self._name or request.name != name:
            raise ToolFailure(ToolErrorCode.INVALID, "the request names another tool")
        entry = self._handlers.get(name)
        if entry is None:
            raise ToolFailure(ToolErrorCode.INVALID, f"no tool {self._name}.{name}")
        spec, handler = entry
        if spec.verticals is not None and tenant.vertical not in spec.verticals:
            raise ToolFailure(
                ToolErrorCode.FORBIDDEN, f"{name} is not offered to {tenant.vertical.value} tenants"
            )
        args = spec.arguments_of(request)
        try:
            async with asyncio.timeout(spec.timeout_s):
                output: ToolOutput = await handler(ToolCall(tenant, request), args)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"{name} took longer than {spec.timeout_s:g}s") from exc
        expected: type[ToolOutput] = spec.result
        if not isinstance(output, expected):
            raise TypeError(f"{name} returned {type(output).__name__}, not {expected.__name__}")
        return output

    async def _record(self, request: ToolRequest, result: ToolResult, started: float) -> None:
        event = ToolEvent(
            tenant=result.tenant,
            call_id=request.call_id,
            source=self._name,
            service=request.service,
            name=request.name,
            request_id=request.event_id,
            ok=result.ok,
            error_code=result.error.code if result.error else None,
            duration_ms=(time.perf_counter() - started) * 1000,
        )
        try:
            await self._events.send(event, subjects.event(result.tenant, "tool"))
        except Exception as exc:
            # The caller already has its answer; losing the record is logged, not fatal.
            log.warning("could not record tool event for %s: %s", request.name, type(exc).__name__)


# --- client --------------------------------------------------------------------------------


class ToolClient:
    """Calls tools over NATS; every outcome, including silence, is a ``ToolResult``."""

    def __init__(
        self,
        connection: NatsClient | NatsBroker,
        *,
        source: str,
        tracer: Tracer | None = None,
    ) -> None:
        self._connection = connection
        self._source = source
        self._tracer = tracer

    def _nats(self) -> NatsClient:
        if isinstance(self._connection, NatsBroker):
            return self._connection.connection
        return self._connection

    async def call(
        self,
        tenant: str,
        service: str,
        name: str,
        arguments: Mapping[str, Any] | ToolArgs,
        *,
        call_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> ToolResult:
        spec = TOOLS.get((service, name))
        if timeout is None:
            timeout = (spec.timeout_s if spec else DEFAULT_TIMEOUT_S) + CLIENT_GRACE_S
        if isinstance(arguments, ToolArgs):
            args = arguments.model_dump(mode="json", exclude_none=True)
        else:
            args = dict(arguments)
        request = ToolRequest(
            tenant=tenant,
            call_id=call_id,
            source=self._source,
            service=service,
            name=name,
            arguments=args,
            idempotency_key=idempotency_key,
        )
        if self._tracer is None:
            return await self._send(request, timeout)
        with self._tracer.start_as_current_span(
            f"tool.call {service}.{name}",
            kind=SpanKind.CLIENT,
            attributes={"tool.service": service, "tool.name": name, "tenant": tenant},
        ) as span:
            result = await self._send(request, timeout)
            span.set_attribute("tool.ok", result.ok)
            if result.error:
                span.set_attribute("tool.error_code", result.error.code.value)
                span.set_status(Status(StatusCode.ERROR, result.error.code.value))
            return result

    async def call_typed(
        self,
        tenant: str,
        spec: ToolSpec[A, R],
        arguments: A,
        *,
        call_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> R:
        """Call ``spec`` and return its typed result, or raise ``ToolCallError``."""
        result = await self.call(
            tenant,
            spec.service,
            spec.name,
            arguments,
            call_id=call_id,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        if not result.ok or result.result is None:
            raise ToolCallError(
                result.error or ToolError(code=ToolErrorCode.INTERNAL, message="empty result")
            )
        return spec.result.model_validate(result.result)

    async def _send(self, request: ToolRequest, timeout: float) -> ToolResult:
        subject = subjects.tool(request.tenant, request.service, request.name)
        headers: dict[str, str] = {}
        headers = trace_headers(headers)
        try:
            reply = await self._nats().request(
                subject,
                request.model_dump_json().encode(),
                timeout=timeout,
                headers=headers or None,
            )
        except (NatsTimeoutError, TimeoutError):
            return self._failed(request, ToolErrorCode.TIMEOUT, f"no answer in {timeout:g}s")
        except NoRespondersError:
            return self._failed(
                request, ToolErrorCode.UNAVAILABLE, f"no {request.service} service is serving"
            )
        try:
            return ToolResult.model_validate_json(reply.data)
        except ValidationError:
            return self._failed(request, ToolErrorCode.INTERNAL, "the tool's reply is malformed")

    def _failed(self, request: ToolRequest, code: ToolErrorCode, message: str) -> ToolResult:
        return ToolResult(
            tenant=request.tenant,
            call_id=request.call_id,
            source=self._source,
            request_id=request.event_id,
            ok=False,
            error=ToolError(code=code, message=message),
        )
