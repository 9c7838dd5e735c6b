"""A background task with an owner: ``start()`` launches it, ``stop()`` cancels and awaits it.

Every long-running loop of a service (ring timeouts, reminders, the booking writer) is one
``OwnedTask`` (a ``PeriodicTask`` for a round repeated at an interval) held by the object
whose lifecycle it follows, so none is fire-and-forget and
none outlives its service. ``stop`` is idempotent; it never swallows the cancellation of
the task that calls it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

__all__ = ["OwnedTask", "PeriodicTask"]

log = logging.getLogger(__name__)


class OwnedTask:
    """One background coroutine, started and stopped by its owner."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]], *, name: str) -> None:
        self._run = run
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Launch the coroutine unless it already runs."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Cancel the coroutine and wait until it has finished; idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # a cancellation of the caller still propagates
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task %s had failed: %r", self._name, exc)


class PeriodicTask:
    """``work`` run again ``interval_s`` after each round ends, until stopped.

    A failed round (a database or NATS outage) is logged by type only, since its message may
    quote stored data, and tried again next time: what it had to do is still there to do.
    """

    def __init__(
        self, work: Callable[[], Awaitable[object]], *, interval_s: float, name: str
    ) -> None:
        self._work = work
        self._interval_s = interval_s
        self._name = name
        self._task = OwnedTask(self._run, name=name)

    @property
    def running(self) -> bool:
        return self._task.running

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self._work()
            except Exception as exc:
                log.warning("%s: round failed (%s); trying again", self._name, type(exc).__name__)
                log.debug("%s: round failed", self._name, exc_info=True)
            await asyncio.sleep(self._interval_s)
