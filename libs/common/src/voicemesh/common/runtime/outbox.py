"""A small in-process outbox: events that must reach JetStream, retried until they do.

Lifecycle events are written while something else happens (a call ends, a ring times out)
and may not be lost to a JetStream outage. ``Outbox.put`` queues an event under a key (the
call id) and returns at once; one worker per key with queued events publishes them in order
through ``JetStreamPublisher.publish``, which waits for the ack, and retries with the one
delivery backoff (``delivery.backoff``: 1, 2, 4 … 30 s) until JetStream has stored each one.
Events carry retry-stable ids (``ids.derived_id``), so a retry whose first attempt was stored
after all is dropped by JetStream's duplicate window: stored exactly once.

``Outbox.publish`` queues and waits until stored, for a caller that moves its own state only
after the event is safe. Memory is bounded (``limit`` events in all: beyond it ``put``
raises ``TransientError``), and ``drain`` gives what is queued a deadline on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from voicemesh.common.contracts.errors import TransientError, UnavailableError
from voicemesh.common.contracts.events import Envelope
from voicemesh.common.runtime.delivery import backoff
from voicemesh.common.runtime.publisher import JetStreamPublisher, trace_headers

__all__ = ["DEFAULT_LIMIT", "Outbox"]

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10_000


@dataclass
class _Entry:
    event: Envelope
    subject: str
    headers: dict[str, str] | None
    stored: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def kind(self) -> str:
        return str(getattr(self.event, "type", type(self.event).__name__))


class Outbox:
    """Per-key ordered events, each published until JetStream acks it (module docstring).

    ``retry_after(attempt)`` is the pause after failed attempt ``attempt`` (1, 2, …).
    """

    def __init__(
        self,
        publisher: JetStreamPublisher,
        *,
        name: str,
        limit: int = DEFAULT_LIMIT,
        retry_after: Callable[[int], float] = backoff,
    ) -> None:
        self._publisher = publisher
        self._name = name
        self._limit = limit
        self._retry_after = retry_after
        self._queues: dict[str, deque[_Entry]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._size = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Events queued and not yet stored."""
        return self._size

    def put(
        self, key: str, event: Envelope, subject: str, *, headers: dict[str, str] | None = None
    ) -> asyncio.Future[None]:
        """Queue ``event`` behind ``key``'s earlier events; the future is done once stored.

        The caller's trace context goes with the event, as if it had published it itself.
        """
        if self._closed:
            raise UnavailableError(f"the {self._name} outbox is closed")
        if self._size >= self._limit:
            raise TransientError(f"the {self._name} outbox holds {self._size} events already")
        entry = _Entry(event, subject, trace_headers(headers))
        self._queues.setdefault(key, deque()).append(entry)
        self._size += 1
        self._idle.clear()
        if key not in self._workers:
            # A context of its own: the worker outlives the caller's span and serves later
            # callers too; each event carries its caller's trace in its headers.
            self._workers[key] = asyncio.create_task(
                self._work(key), name=f"{self._name}-outbox", context=contextvars.Context()
            )
        return entry.stored

    async def publish(
        self, key: str, event: Envelope, subject: str, *, headers: dict[str, str] | None = None
    ) -> None:
        """Queue ``event`` and wait until JetStream has stored it. A cancelled caller leaves
        it queued: it is still published."""
        await asyncio.shield(self.put(key, event, subject, headers=headers))

    async def _work(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                entry = queue[0]
                await self._deliver(entry)
                queue.popleft()
                self._size -= 1
                if not entry.stored.done():
                    entry.stored.set_result(None)
        finally:
            if not queue:
                self._queues.pop(key, None)
            self._workers.pop(key, None)
            if not self._workers:
                self._idle.set()

    async def _deliver(self, entry: _Entry) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._publisher.publish(entry.event, entry.subject, headers=entry.headers)
                if attempt > 1:
                    log.info(
                        "%s: %s event stored after %d attempts", self._name, entry.kind, attempt
                    )
                return
            except Exception as exc:
                delay = self._retry_after(attempt)
                log.warning(
                    "%s: %s event not stored (%s, attempt %d); retrying in %.0fs",
                    self._name,
                    entry.kind,
                    type(exc).__name__,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)

    async def drain(self, timeout: float) -> None:
        """Close to new events, give the queued ones ``timeout`` seconds, then stop."""
        self._closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        await self.stop()

    async def stop(self) -> None:
        """Cancel the workers and abandon what is still queued (logged by type); idempotent."""
        self._closed = True
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.wait(workers)  # a cancellation of the caller still propagates
        lost = Counter(entry.kind for queue in self._queues.values() for entry in queue)
        for queue in self._queues.values():
            for entry in queue:
                entry.stored.cancel()
        self._queues.clear()
        self._workers.clear()
        self._size = 0
        self._idle.set()
        for kind, count in lost.items():
            log.error("%s: %d %s event(s) never reached JetStream", self._name, count, kind)
