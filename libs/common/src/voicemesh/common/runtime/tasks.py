"""A background task with an owner: ``start()`` launches it, ``stop()`` cancels and awaits it.

Every long-running loop of a service (ring timeouts, reminders, the booking writer) is one
``OwnedTask`` held by the object whose lifecycle it follows, so none is fire-and-forget and
none outlives its service. ``stop`` is idempotent; it never swallows the cancellation of
the task that calls it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["OwnedTask"]

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
