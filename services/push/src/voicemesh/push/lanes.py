"""Per-tenant lanes: each tenant's call lifecycle events, consumed with its own bounded window.

A ``TenantLane`` owns one tenant's durable JetStream pull consumer and never holds more than
``window`` of its messages at once: it fetches only as many as it has room for, so a tenant
whose pushes hang fills its own window and leaves its backlog in JetStream, while every other
tenant's lane keeps fetching. Nothing is shared that a slow tenant could fill.

Messages are handled concurrently (order across calls does not matter) but one call's
messages within a fetch run in order; each message is acked after its own work. The
``CallRequested`` messages of a fetch are prepared together (one Redis round trip for all).

These lanes use nats-py directly, not FastStream subscribers: profiling the push flood
(bench/push.py) showed FastStream's per-message pipeline (dependency injection, decoding,
four middlewares) costing more than the push itself. What the middlewares did is done
here: a trace span per event, NAK with backoff for transient failures, and a dead-letter
entry with the reason for a bad message or one out of deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from opentelemetry.trace import Tracer
from pydantic import ValidationError

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.errors import (
    Category,
    InvalidMessage,
    UnavailableError,
    category_of,
)
from voicemesh.common.contracts.events import (
    CallAnswered,
    CallConnected,
    CallEnded,
    CallRequested,
    DeadLetter,
    Envelope,
)
from voicemesh.common.contracts.streams import ConsumerSpec, stream_for
from voicemesh.common.runtime.telemetry import inject_trace_headers, trace_context_from
from voicemesh.push.ringer import PreparedRing, Ringer

__all__ = ["JetStreamEvents", "LifecycleLanes", "TenantLane"]

log = logging.getLogger(__name__)

#: How often a long ring (APNs retries through the ring window) tells JetStream it is still
#: being handled, well inside the consumer's ack wait.
HEARTBEAT_S = 5.0
MAX_DLQ_PAYLOAD = 16 * 1024
#: Lifecycle events the push service acts on; the rest (its own ringing/missed/failed and
#: everyone else's) are acked without being validated.
_HANDLED: dict[str, type[Envelope]] = {
    "call.requested": CallRequested,
    "call.answered": CallAnswered,
    "call.connected": CallConnected,
    "call.ended": CallEnded,
}
_SPAN = f"{subjects.low_cardinality(subjects.call_lifecycle('*', '*'))} process"


class JetStreamEvents:
    """Publishes wire events to JetStream with nats-py: deduplicated by ``event_id``, trace
    context in the headers, confirmed (PubAck) within ``timeout_s``.

    The hot-path twin of ``voicemesh.common.runtime.bus.JetStreamPublisher``: it pipelines publishes
    (``publish_async``) instead of paying FastStream's publish pipeline for each one.
    """

    def __init__(self, js: JetStreamContext, *, timeout_s: float = 5.0) -> None:
        self._js = js
        self._timeout = timeout_s

    async def publish(self, event: Envelope, subject: str) -> None:
        headers = inject_trace_headers({"Nats-Msg-Id": event.event_id})
        try:
            future = await self._js.publish_async(
                subject,
                event.model_dump_json().encode(),
                stream=stream_for(subject),
                headers=headers,
                # No stall timeout: with one, nats-py wraps each publish in a task.
                wait_stall=None,
            )
            async with asyncio.timeout(self._timeout):
                await future
        except (TimeoutError, nats.errors.Error) as exc:
            raise UnavailableError(
                f"JetStream did not confirm a publish: {type(exc).__name__}"
            ) from exc


Decoded = tuple[Msg, Envelope | None]


class TenantLane:
    """One tenant's lifecycle consumer: fetch → prepare → handle, ``window`` in flight."""

    def __init__(
        self,
        tenant: str,
        js: JetStreamContext,
        spec: ConsumerSpec,
        ringer: Ringer,
        *,
        publish: Callable[[Envelope, str], Awaitable[None]],
        tracer: Tracer,
        window: int,
        fetch_timeout_s: float = 2.0,
        stop_grace_s: float = 2.0,
    ) -> None:
        self.tenant = tenant
        self.window = window
        self._js = js
        self._spec = spec
        self._ringer = ringer
        self._publish = publish
        self._tracer = tracer
        self._fetch_timeout = fetch_timeout_s
        self._stop_grace = stop_grace_s
        self._inflight: dict[int, tuple[Msg, float]] = {}
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self.handled = 0

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        spec, tenant = self._spec, self.tenant
        self._sub = await self._js.pull_subscribe(
            spec.filter_subject(tenant),
            durable=spec.durable(tenant),
            stream=spec.stream,
            config=spec.config(tenant),
        )
        self._loop = asyncio.create_task(self._run(), name=f"push-lane-{tenant}")
        self._beat = asyncio.create_task(self._heartbeat(), name=f"push-lane-beat-{tenant}")

    async def stop(self) -> None:
        """Stop fetching, give in-flight events ``stop_grace_s``, then NAK what is left so
        another replica takes it over at once; calling it twice is harmless."""
        for task in (self._loop, self._beat):
            if task is not None:
                task.cancel()
                # A fetch cancelled mid-request may end in nats-py's TimeoutError instead.
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await task
        self._loop = self._beat = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._stop_grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- fetching ---------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._sub is not None
        while True:
            while len(self._inflight) >= self.window:
                self._room.clear()
                await self._room.wait()
            try:
                msgs = await self._sub.fetch(
                    self.window - len(self._inflight), timeout=self._fetch_timeout
                )
            except TimeoutError:
                # Nothing to fetch (nats-py raises asyncio's and its own kind), or a stop
                # that nats-py turned into a timeout: then stop.
                if _cancelling():
                    raise asyncio.CancelledError from None
                continue
            except Exception as exc:
                # Reconnecting (nats-py reconnects by itself) or a bug: never let the lane
                # die, try again shortly.
                log.warning("lane %s: fetch failed (%s)", self.tenant, type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            now = time.monotonic()
            for msg in msgs:
                self._inflight[id(msg)] = (msg, now)
            self._spawn(self._handle_batch(msgs))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release(self, msg: Msg) -> None:
        self._inflight.pop(id(msg), None)
        if len(self._inflight) < self.window:
            self._room.set()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            due = time.monotonic() - HEARTBEAT_S
            for msg, since in list(self._inflight.values()):
                if since <= due:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    # -- handling ---------------------------------------------------------------------------

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        decoded: list[Decoded] = []
        for msg in msgs:
            try:
                decoded.append((msg, self._decode(msg)))
            except InvalidMessage as exc:
                await self._settle(msg, exc)
        # One call's events run in order; a request that is its call's first event in this
        # fetch is prepared with the others (one Redis round trip for all of them).
        groups: dict[str, list[tuple[Msg, Envelope]]] = {}
        firsts: list[CallRequested] = []
        for msg, event in decoded:
            if event is None:
                await self._ack(msg)
                continue
            group = groups.setdefault(event.call_id or "", [])
            if not group and isinstance(event, CallRequested):
                firsts.append(event)
            group.append((msg, event))
        prepared: dict[str, PreparedRing | BaseException] = {}
        if firsts:
            try:
                for ring in await self._ringer.prepare(firsts):
                    prepared[ring.event.call_id] = ring
            except asyncio.CancelledError:
                # Stopping before any of them started: hand them all back at once.
                for group in groups.values():
                    for msg, _ in group:
                        with contextlib.suppress(Exception):
                            await msg.nak()
                        self._release(msg)
                raise
            except Exception as exc:
                for event in firsts:
                    prepared[event.call_id] = exc
        for group in groups.values():
            self._spawn(self._handle_group(group, prepared))

    def _decode(self, msg: Msg) -> Envelope | None:
        try:
            data = json.loads(msg.data)
            if not isinstance(data, dict):
                raise InvalidMessage("a lifecycle event is a JSON object")
            model = _HANDLED.get(str(data.get("type")))
            if model is None:
                return None
            event: Envelope = model.model_validate(data)
        except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError
            raise InvalidMessage(_reason(exc)) from exc
        if event.tenant != self.tenant:
            raise InvalidMessage(
                f"tenant mismatch: subject tenant {self.tenant!r}, payload tenant {event.tenant!r}"
            )
        return event

    async def _handle_group(
        self, group: list[tuple[Msg, Envelope]], prepared: dict[str, PreparedRing | BaseException]
    ) -> None:
        for index, (msg, event) in enumerate(group):
            try:
                context = trace_context_from(msg.headers)
                with self._tracer.start_as_current_span(_SPAN, context=context) as span:
                    span.set_attribute("voicemesh.event", str(getattr(event, "type", "")))
                    ring = prepared.get(event.call_id or "") if index == 0 else None
                    await self._handle(event, ring)
            except asyncio.CancelledError:
                # Stopping: hand this message and the call's later ones back at once, so
                # another replica takes them over without waiting for ack_wait.
                for left, _ in group[index:]:
                    with contextlib.suppress(Exception):
                        await left.nak()
                    self._release(left)
                raise
            except Exception as exc:
                await self._settle(msg, exc)
            else:
                await self._ack(msg)

    async def _handle(self, event: Envelope, ring: PreparedRing | BaseException | None) -> None:
        if isinstance(ring, BaseException):
            raise ring
        match event:
            case CallRequested():
                if ring is not None:
                    await self._ringer.ring_prepared(ring)
                else:
                    await self._ringer.ring(event)
            case CallAnswered() | CallConnected():
                await self._ringer.answered(event.tenant, event.call_id)
            case CallEnded():
                await self._ringer.ended(event)
            case _:
                return

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except Exception as exc:
            # Unacked, it is redelivered after ack_wait; handlers are idempotent.
            log.warning("lane %s: ack failed (%s)", self.tenant, type(exc).__name__)
        finally:
            self._release(msg)
            self.handled += 1

    async def _settle(self, msg: Msg, exc: BaseException) -> None:
        """A failed message: NAK with backoff while it may succeed, else dead-letter it."""
        try:
            deliveries = _deliveries(msg)
            permanent = category_of(exc) is Category.DEAD_LETTER
            if not permanent and deliveries < self._spec.max_deliver:
                delay = float(min(30, 2 ** max(0, deliveries - 1)))
                log.warning(
                    "lane %s: handling failed (%s, delivery %d), retrying in %.0fs",
                    self.tenant,
                    type(exc).__name__,
                    deliveries,
                    delay,
                )
                with contextlib.suppress(Exception):
                    await msg.nak(delay=delay)
                return
            await self._dead_letter(msg, exc, deliveries)
            with contextlib.suppress(Exception):
                await msg.ack()
        finally:
            self._release(msg)

    async def _dead_letter(self, msg: Msg, exc: BaseException, deliveries: int) -> None:
        body = bytes(msg.data or b"")
        entry = DeadLetter(
            tenant=self.tenant,
            source="push",
            subject=msg.subject,
            consumer=self._spec.durable(self.tenant),
            reason=_reason(exc),
            error_type=type(exc).__name__,
            deliveries=deliveries,
            payload=body[:MAX_DLQ_PAYLOAD].decode("utf-8", errors="replace"),
            payload_truncated=len(body) > MAX_DLQ_PAYLOAD,
        )
        log.error(
            "dead-lettered a message on %s: %s", subjects.low_cardinality(msg.subject), entry.reason
        )
        await self._publish(entry, subjects.dead_letter(self.tenant))


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False)
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:5]
        )
    return (str(exc) or type(exc).__name__)[:2048]


class LifecycleLanes:
    """Every served tenant's lane; ``start``/``stop`` own them all."""

    def __init__(self, lanes: list[TenantLane]) -> None:
        self.lanes = {lane.tenant: lane for lane in lanes}

    async def start(self) -> None:
        for lane in self.lanes.values():
            await lane.start()

    async def stop(self) -> None:
        await asyncio.gather(*(lane.stop() for lane in self.lanes.values()))

    def stats(self) -> dict[str, Any]:
        return {
            t: {"in_flight": lane.in_flight, "window": lane.window}
            for t, lane in self.lanes.items()
        }
