"""The one JetStream publisher: tenant-scoped message ids, trace context, pipelined acks.

Every service publishes wire events through ``JetStreamPublisher``:

* ``publish`` sends and waits for JetStream's ack, raising ``UnavailableError`` when none
  comes: for work that must not be acknowledged upstream before its event is stored;
* ``send`` sends and returns; the ack is checked as it arrives (many in flight, no task,
  future or timer per message). A refusal or a missing ack is logged with the event's type,
  never its content. ``drain`` waits for what is outstanding on shutdown.

The ``Nats-Msg-Id`` of every publish is ``ids.message_id(tenant, event_id)``, so a retried
publish is dropped by JetStream and one tenant can never deduplicate another's event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import get_current_span

from voicemesh.common.contracts.errors import TransientError, UnavailableError
from voicemesh.common.contracts.events import Envelope
from voicemesh.common.contracts.ids import message_id
from voicemesh.common.contracts.streams import stream_for

__all__ = ["PUBLISH_TIMEOUT_S", "JetStreamPublisher", "trace_headers"]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
MSG_ID = "Nats-Msg-Id"
EXPECTED_STREAM = "Nats-Expected-Stream"
_STATUS = "Status"
_NO_RESPONDERS = "503"


def trace_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the current span's W3C ``traceparent``/``tracestate``.

    Written directly: the global propagator's ``inject`` cost more than the publish itself,
    and voicemesh carries no baggage.
    """
    out = dict(headers or {})
    context = get_current_span().get_span_context()
    if context.is_valid:
        flags = int(context.trace_flags)
        out["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
        if context.trace_state:
            out["tracestate"] = context.trace_state.to_header()
    return out


def _api_error(data: bytes) -> str:
    try:
        error = json.loads(data).get("error", {})
        return f"{error.get('code')} {error.get('description', '')}".strip()
    except (ValueError, AttributeError):
        return "unreadable reply"


class JetStreamPublisher:
    """Publishes wire events to JetStream on one NATS connection (see the module docstring).

    ``connection`` is the client itself or a function returning it (a FastStream broker's
    connection exists only once the broker has started).
    """

    def __init__(
        self,
        connection: Client | Callable[[], Client],
        *,
        timeout: float = PUBLISH_TIMEOUT_S,
        max_pending: int = 10_000,
    ) -> None:
        self._connection = connection
        self._timeout = timeout
        self._max_pending = max_pending
        self._subscription: Subscription | None = None
        self._opening: asyncio.Lock = asyncio.Lock()
        self._inbox = ""
        self._sent = 0
        # token -> (deadline, event type, future or None); insertion order is send order.
        self._pending: dict[str, tuple[float, str, asyncio.Future[None] | None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def nc(self) -> Client:
        connection = self._connection
        return connection if isinstance(connection, Client) else connection()

    @property
    def pending(self) -> int:
        """Events sent whose ack has not arrived yet."""
        return len(self._pending)

    async def _ensure_open(self) -> None:
        if self._subscription is not None:
            return
        async with self._opening:
            if self._subscription is None:
                nc = self.nc
                self._inbox = nc.new_inbox()
                self._subscription = await nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def publish(
        self, event: Envelope, subject: str, *, headers: dict[str, str] | None = None
    ) -> None:
        """Send ``event`` and wait for JetStream to store it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._send(event, subject, headers, future)
        try:
            async with asyncio.timeout(self._timeout):
                await future
        except TimeoutError as exc:
            raise UnavailableError(
                f"JetStream did not confirm a {_kind(event)} event in {self._timeout:g}s"
            ) from exc

    async def send(
        self, event: Envelope, subject: str, *, headers: dict[str, str] | None = None
    ) -> None:
        """Send ``event``; its ack is checked when it arrives (pipelined)."""
        await self._send(event, subject, headers, None)

    async def _send(
        self,
        event: Envelope,
        subject: str,
        extra: dict[str, str] | None,
        future: asyncio.Future[None] | None,
    ) -> None:
        await self._ensure_open()
        now = time.monotonic()
        self._expire(now)
        if len(self._pending) >= self._max_pending:
            raise TransientError(f"{len(self._pending)} events are waiting for JetStream acks")
        headers = trace_headers({**(extra or {}), MSG_ID: message_id(event.tenant, event.event_id)})
        if stream := stream_for(subject):
            headers[EXPECTED_STREAM] = stream
        self._sent += 1
        token = str(self._sent)
        self._pending[token] = (now + self._timeout, _kind(event), future)
        self._idle.clear()
        try:
            await self.nc.publish(
                subject,
                event.model_dump_json().encode(),
                reply=f"{self._inbox}.{token}",
                headers=headers,
            )
        except BaseException as exc:
            self._forget(token)
            if isinstance(exc, Exception):
                raise UnavailableError(f"could not publish: {type(exc).__name__}") from exc
            raise

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        entry = self._forget(token)
        if entry is None:
            return  # already given up on as unacknowledged
        _deadline, kind, future = entry
        problem = None
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            problem = "no stream takes its subject"
        elif b'"error"' in msg.data:
            problem = _api_error(msg.data)
        if future is not None and not future.done():
            if problem is None:
                future.set_result(None)
            else:
                future.set_exception(
                    UnavailableError(f"JetStream refused a {kind} event: {problem}")
                )
        elif problem is not None:
            log.warning("JetStream refused the %s event: %s", kind, problem)

    def _forget(self, token: str) -> tuple[float, str, asyncio.Future[None] | None] | None:
        entry = self._pending.pop(token, None)
        if not self._pending:
            self._idle.set()
        return entry

    def _expire(self, now: float) -> None:
        late: dict[str, int] = {}
        while self._pending:
            token, (deadline, kind, future) = next(iter(self._pending.items()))
            if deadline > now:
                break
            self._forget(token)
            if future is None:
                late[kind] = late.get(kind, 0) + 1
        for kind, count in late.items():
            log.warning("no JetStream ack for %d %s event(s) in %gs", count, kind, self._timeout)

    async def drain(self, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        """Wait (at most ``timeout``) for the acks still outstanding, then stop; idempotent."""
        if self._subscription is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        self._expire(float("inf"))
        subscription, self._subscription = self._subscription, None
        with contextlib.suppress(Exception):  # a closed connection has nothing to undo
            await subscription.unsubscribe()


def _kind(event: Envelope) -> str:
    return str(getattr(event, "type", type(event).__name__))
