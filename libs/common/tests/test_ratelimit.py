"""The per-tenant sliding-window limiter on a real Redis: budget, Retry-After, isolation."""

from __future__ import annotations

from redis.asyncio import Redis

from voicemesh.common.runtime.ratelimit import SlidingWindowLimiter
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import wait_until


async def test_limit_per_tenant_refusals_not_counted_and_window_slides(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        limiter = SlidingWindowLimiter(redis, "call", limit=2, window_s=1.0)
        assert [(await limiter.hit("a")).allowed for _ in range(2)] == [True, True]
        refused = await limiter.hit("a")
        assert not refused.allowed and refused.retry_after_s == 1
        assert (await limiter.hit("b")).allowed  # another tenant's budget is its own
        # Refused requests are not counted, so the budget comes back once the window slides.
        for _ in range(5):
            assert not (await limiter.hit("a")).allowed
        assert await redis.zcard(limiter.key("a")) == 2

        async def admitted() -> bool:
            return (await limiter.hit("a")).allowed

        await wait_until(admitted, timeout=3, interval=0.1, what="the window to slide")
    finally:
        await redis.aclose()


async def test_redis_unreachable_lets_requests_through() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        limiter = SlidingWindowLimiter(redis, "offer", limit=1, window_s=60)
        assert (await limiter.hit("a")).allowed
        assert (await limiter.hit("a")).allowed
    finally:
        await redis.aclose()
