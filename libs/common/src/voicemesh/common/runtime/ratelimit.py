"""Per-tenant rate limits (signaling, device registration), shared by replicas via Redis.

A sliding-window log: each admitted request is one member of a sorted set scored by its
time, so a tenant gets at most ``limit`` requests in any ``window_s`` seconds (a fixed window
would let a burst of twice the limit through across a window boundary). One tenant's keys
never count against another's. Over the limit the route answers ``429`` with
``Retry-After`` = seconds until the oldest admitted request leaves the window.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass

from fastapi import HTTPException
from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["Decision", "SlidingWindowLimiter", "too_many_requests"]

log = logging.getLogger(__name__)

PREFIX = "voicemesh:ratelimit"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_s: int = 0


class SlidingWindowLimiter:
    """At most ``limit`` ``action`` requests per tenant in any ``window_s`` seconds."""

    def __init__(self, redis: Redis, action: str, *, limit: int, window_s: float) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a rate limit needs limit >= 1 and window_s > 0")
        self._redis = redis
        self.action = action
        self.limit = limit
        self.window_s = window_s

    def key(self, tenant: str) -> str:
        return f"{PREFIX}:{self.action}:{tenant}"

    async def hit(self, tenant: str) -> Decision:
        """Count one request of ``tenant``; refused requests are not counted.

        Redis unreachable: the request is let through (logged) — a rate limit protects
        capacity, and refusing every call while Redis restarts would be the outage itself.
        """
        key = self.key(tenant)
        now_ms = time.time() * 1000
        window_ms = self.window_s * 1000
        member = f"{now_ms:.3f}-{uuid.uuid4().hex[:8]}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", now_ms - window_ms)
                pipe.zadd(key, {member: now_ms})
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
                pipe.pexpire(key, math.ceil(window_ms))
                _, _, count, oldest, _ = await pipe.execute()
            if int(count) <= self.limit:
                return Decision(True, self.limit - int(count))
            await self._redis.zrem(key, member)
        except (RedisError, OSError) as exc:
            log.warning(
                "rate limiter %s unavailable, request let through: %s",
                self.action,
                type(exc).__name__,
            )
            return Decision(True, 0)
        oldest_ms = float(oldest[0][1]) if oldest else now_ms
        retry_ms = max(0.0, oldest_ms + window_ms - now_ms)
        return Decision(False, 0, max(1, math.ceil(retry_ms / 1000)))


def too_many_requests(limiter: SlidingWindowLimiter, decision: Decision) -> HTTPException:
    log.info("rate limited %s: over %d per %gs", limiter.action, limiter.limit, limiter.window_s)
    return HTTPException(
        429,
        f"too many {limiter.action} requests for this tenant: at most {limiter.limit} "
        f"per {limiter.window_s:g} s",
        headers={"Retry-After": str(decision.retry_after_s)},
    )
