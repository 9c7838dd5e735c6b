"""The sms sender's per-tenant rate on a real Redis: a moving window, never a fixed one.

A fixed window lets a burst of twice the limit through across a window boundary; the
provider's quota (and the tenant's bill) counts any ``window_s`` seconds, so the sender does.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from voicemesh.sms.sender import RateLimiter

LIMIT, WINDOW_S = 2, 2
#: Scheduling slack: a send may be admitted this much before the window strictly allows.
SLACK_S = 0.25


async def test_no_window_of_window_s_holds_more_than_the_limit(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    heartbeats = 0

    async def heartbeat() -> None:
        nonlocal heartbeats
        heartbeats += 1

    try:
        limiter = RateLimiter(redis, limit=LIMIT, window_s=WINDOW_S)
        start = time.monotonic()
        sent: list[float] = []

        async def send(tenant: str = "clinic") -> None:
            await limiter.acquire(tenant, heartbeat=heartbeat)
            sent.append(time.monotonic() - start)

        await send()
        await asyncio.sleep(1.5)  # the second text late in the first window ...
        await send()
        async with asyncio.timeout(10):
            await send()  # ... then two more as soon as they may go
            await send()
        # Another tenant's texts do not wait for this one's budget.
        other = time.monotonic()
        await limiter.acquire("salon", heartbeat=heartbeat)
        assert time.monotonic() - other < 0.5
    finally:
        await redis.aclose()
    assert heartbeats > 0  # the waiting job kept its lease
    windows = [sent[i + LIMIT] - sent[i] for i in range(len(sent) - LIMIT)]
    assert all(w >= WINDOW_S - SLACK_S for w in windows), sent
