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
here: a trace span per event, the tenant fence, and the service's one delivery policy
(``runtime.delivery.Delivery.settle``: NAK with backoff for a transient failure; for a bad
message or one out of deliveries, a dead letter with the reason, then term).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from opentelemetry.trace import Tracer

from voicemesh.common import CallAnswered, CallConnected, CallEnded, CallRequested, Envelope
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.errors import InvalidMessage
from voicemesh.common.contracts.streams import ConsumerSpec
from voicemesh.common.runtime.delivery import Delivery, check_tenant_fence, failure_reason
from voicemesh.common.runtime.telemetry import trace_context_from
from voicemesh.push.ringer import PreparedRing, Ringer

__all__ = ["LifecycleLanes", "TenantLane"]

log = logging.getLogger(__name__)

#: How often a long ring (APNs retries through the ring window) tells JetStream it is still
#: being handled, well inside the consumer's ack wait.
HEARTBEAT_S = 5.0
#: How long one fetch waits for messages before the lane looks again.
FETCH_TIMEOUT_S = 2.0
#: How long ``stop`` gives the events in flight before it NAKs what is left.
STOP_GRACE_S = 2.0
#: Lifecycle events the push service acts on; the rest (its own ringing/missed/failed and
#: everyone else's) are acked without being validated.
_HANDLED: dict[str, type[Envelope]] = {
    "call.requested": CallRequested,
    "call.answered": CallAnswered,
    "call.connected": CallConnected,
    "call.ended": CallEnded,
}
_SPAN = f"{subjects.low_cardinality(subjects.call_lifecycle('*', '*'))} process"


Decoded = tuple[Msg, Envelope | None]


@dataclass(eq=False)
class TenantLane:
    """One tenant's lifecycle consumer: fetch → prepare → handle, ``window`` in flight."""

    tenant: str
    js: JetStreamContext
    spec: ConsumerSpec
    ringer: Ringer
    _: KW_ONLY
    delivery: Delivery
    tracer: Tracer
    window: int
    handled: int = field(default=0, init=False)
    _inflight: dict[int, tuple[Msg, float]] = field(default_factory=dict, init=False)
    _room: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _loop: asyncio.Task[None] | None = field(default=None, init=False)
    _beat: asyncio.Task[None] | None = field(default=None, init=False)
    _sub: JetStreamContext.PullSubscription | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        spec, tenant = self.spec, self.tenant
        self._sub = await self.js.pull_subscribe(
            spec.filter_subject(tenant),
            durable=spec.durable(tenant),
            stream=spec.stream,
            config=spec.config(tenant),
        )
        self._loop = asyncio.create_task(self._run(), name=f"push-lane-{tenant}")
        self._beat = asyncio.create_task(self._heartbeat(), name=f"push-lane-beat-{tenant}")

    async def stop(self) -> None:
        """Stop fetching, give in-flight events ``STOP_GRACE_S``, then NAK what is left so
        another replica takes it over at once; calling it twice is harmless."""
        # nats-py may swallow a cancellation mid-fetch (and with it the task's cancelling
        # count): the flag makes the fetch loop end at its next turn all the same.
        self._stopping = True
        for task in (self._loop, self._beat):
            if task is not None:
                task.cancel()
                # A fetch cancelled mid-request may end in nats-py's TimeoutError instead.
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await task
        self._loop = self._beat = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
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
        while not self._stopping:
            while len(self._inflight) >= self.window:
                self._room.clear()
                await self._room.wait()
            try:
                msgs = await self._sub.fetch(
                    self.window - len(self._inflight), timeout=FETCH_TIMEOUT_S
                )
            except TimeoutError:
                # Nothing to fetch (nats-py raises asyncio's and its own kind), or a stop
                # that nats-py turned into a timeout: then stop.
                if self._stopping or _cancelling():
                    raise asyncio.CancelledError from None
                continue
            except Exception as exc:
                # Reconnecting (nats-py reconnects by itself) or a bug: never let the lane
                # die, try again shortly.
                if self._stopping:
                    raise asyncio.CancelledError from None
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
                for ring in await self.ringer.prepare(firsts):
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
            check_tenant_fence(msg.subject, msg.data)
            event: Envelope = model.model_validate(data)
        except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError
            raise InvalidMessage(failure_reason(exc)) from exc
        return event

    async def _handle_group(
        self, group: list[tuple[Msg, Envelope]], prepared: dict[str, PreparedRing | BaseException]
    ) -> None:
        for index, (msg, event) in enumerate(group):
            try:
                context = trace_context_from(msg.headers)
                with self.tracer.start_as_current_span(_SPAN, context=context) as span:
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
                    await self.ringer.ring_prepared(ring)
                else:
                    await self.ringer.ring(event)
            case CallAnswered() | CallConnected():
                await self.ringer.answered(event.tenant, event.call_id)
            case CallEnded():
                await self.ringer.ended(event)
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
        """A failed message: the delivery policy NAKs it, or dead-letters then terms it."""
        try:
            await self.delivery.settle(
                msg,
                exc,
                consumer=self.spec.durable(self.tenant),
                max_deliver=self.spec.max_deliver,
            )
        finally:
            self._release(msg)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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
