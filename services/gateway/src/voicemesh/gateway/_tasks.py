"""Owned background tasks: stopping them without swallowing our own cancellation."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["LoopLagMonitor", "cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it; re-raise only if *we* are being cancelled."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


class LoopLagMonitor:
    """How late the event loop wakes up: the first sign that a worker has too many calls."""

    def __init__(self, interval_s: float = 0.05, window: int = 200) -> None:
        self.interval_s = interval_s
        self.samples: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    def p99_ms(self) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.samples.append(max(0.0, loop.time() - due))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
