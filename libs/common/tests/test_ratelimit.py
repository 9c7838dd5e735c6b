"""The per-tenant rate limiter (``limits``' moving window) on a real Redis: budget,
Retry-After, isolation, no burst across a window boundary, and what an outage does."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from voicemesh.common.contracts.errors import UnavailableError
from voicemesh.common.runtime.ratelimit import SlidingWindowLimiter, too_many_requests
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import wait_until


async def test_limit_per_tenant_refusals_not_counted_and_window_slides(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        limiter = SlidingWindowLimiter(redis, "call", limit=2, window_s=1.0)
        assert [(await limiter.hit("a")).allowed for _ in range(2)] == [True, True]
        refused = await limiter.hit("a")
        assert not refused.allowed and refused.retry_after_s == 1
        answer = too_many_requests(limiter, refused)
        assert answer.status_code == 429 and answer.headers == {"Retry-After": "1"}
        assert (await limiter.hit("b")).allowed  # another tenant's budget is its own
        # Refused requests are not counted, so the budget comes back once the window slides.
        for _ in range(5):
            assert not (await limiter.hit("a")).allowed

        async def admitted() -> bool:
            return (await limiter.hit("a")).allowed

        await wait_until(admitted, timeout=3, interval=0.1, what="the window to slide")
    finally:
        await redis.aclose()


async def test_no_burst_across_a_window_boundary_and_retry_after_counts_down(
    redis_url: str,
) -> None:
    redis = Redis.from_url(redis_url)
    try:
        limiter = SlidingWindowLimiter(redis, "offer", limit=2, window_s=3)
        assert (await limiter.hit("a")).allowed
        await asyncio.sleep(1.2)
        assert (await limiter.hit("a")).allowed
        refused = await limiter.hit("a")
        assert not refused.allowed and 1.0 < refused.wait_s <= 1.8
        assert refused.retry_after_s == 2  # whole seconds, rounded up
        # Once the first request has left the window exactly one more fits, not two.
        await asyncio.sleep(refused.wait_s + 0.05)
        assert [(await limiter.hit("a")).allowed for _ in range(2)] == [True, False]
    finally:
        await redis.aclose()


async def test_redis_unreachable_lets_requests_through_unless_strict() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        limiter = SlidingWindowLimiter(redis, "offer", limit=1, window_s=60)
        assert (await limiter.hit("a")).allowed
        assert (await limiter.hit("a")).allowed
        strict = SlidingWindowLimiter(redis, "sms", limit=1, window_s=60, fail_open=False)
        with pytest.raises(UnavailableError, match="rate limiter sms unavailable"):
            await strict.hit("a")
    finally:
        await redis.aclose()
