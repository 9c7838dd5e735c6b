"""Per-tenant rate limits (signaling, device registration, texts), shared by replicas via Redis.

The counting is the ``limits`` library's moving window (``MovingWindowRateLimiter`` on its
async Redis storage, through the service's own redis-py pool): a tenant gets at most
``limit`` requests in any ``window_s`` seconds (a fixed window would let twice the limit
through across a window boundary), refused requests are not counted, and one tenant's key
never counts against another's. Each tenant's counters are the Redis keys
``voicemesh:ratelimit:<tenant>:*`` (``tenant_key_pattern``), so a Redis ACL user per tenant
can be fenced to its own (``deploy/k8s/redis_acl.py``). Over the limit a route answers
``429`` with ``Retry-After`` = seconds until the oldest admitted request leaves the window;
the sms sender waits that long.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from fastapi import HTTPException
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from voicemesh.common.contracts.errors import UnavailableError

__all__ = ["PREFIX", "Decision", "SlidingWindowLimiter", "tenant_key_pattern", "too_many_requests"]

log = logging.getLogger(__name__)

PREFIX = "voicemesh:ratelimit"


def tenant_key_pattern(tenant: str) -> str:
    """The Redis key pattern of every rate-limit counter of ``tenant`` (``*``: every tenant)."""
    return f"{PREFIX}:*" if tenant == "*" else f"{PREFIX}:{tenant}:*"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    #: Seconds until one more request would be admitted (0 when this one was).
    wait_s: float = 0.0

    @property
    def retry_after_s(self) -> int:
        """``wait_s`` as a ``Retry-After`` value: whole seconds, at least 1 when refused."""
        return 0 if self.allowed else max(1, math.ceil(self.wait_s))


class SlidingWindowLimiter:
    """At most ``limit`` ``action`` requests per tenant in any ``window_s`` seconds.

    ``window_s`` is rounded up to whole seconds (the library's granularity). With
    ``fail_open`` (routes) an unreachable Redis lets requests through, logged: a rate limit
    protects capacity, and refusing every call while Redis restarts would be the outage
    itself. Without it (texts, which cost money and have a provider quota) ``hit`` raises
    ``UnavailableError`` and the job is retried.
    """

    def __init__(
        self,
        redis: Redis,
        action: str,
        *,
        limit: int,
        window_s: float,
        fail_open: bool = True,
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a rate limit needs limit >= 1 and window_s > 0")
        self.action = action
        self.limit = limit
        self.window_s = window_s
        self.fail_open = fail_open
        self._seconds = math.ceil(window_s)
        self._items: dict[str, RateLimitItemPerSecond] = {}
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            # Keys are <PREFIX>:<tenant>:<action>/<limit>/<seconds>/second (see _item).
            key_prefix=PREFIX,
            wrap_exceptions=True,
            # The service's own pool: one set of Redis connections, one place to close them.
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # typed too narrowly
        )
        self._strategy = MovingWindowRateLimiter(storage)

    def _item(self, tenant: str) -> RateLimitItemPerSecond:
        """The limit of ``tenant``: its namespace puts the tenant first in the key."""
        item = self._items.get(tenant)
        if item is None:
            namespace = f"{tenant}:{self.action}"
            item = RateLimitItemPerSecond(self.limit, self._seconds, namespace=namespace)
            self._items[tenant] = item
        return item

    async def hit(self, tenant: str) -> Decision:
        """Count one request of ``tenant`` if it is within the limit."""
        item = self._item(tenant)
        try:
            if await self._strategy.hit(item):
                stats = await self._strategy.get_window_stats(item)
                return Decision(True, max(0, stats.remaining))
            stats = await self._strategy.get_window_stats(item)
        except (StorageError, RedisError, OSError) as exc:
            if not self.fail_open:
                raise UnavailableError(
                    f"rate limiter {self.action} unavailable: {type(exc).__name__}"
                ) from exc
            log.warning(
                "rate limiter %s unavailable, request let through: %s",
                self.action,
                type(exc).__name__,
            )
            return Decision(True, 0)
        return Decision(False, 0, max(0.0, stats.reset_time - time.time()))


def too_many_requests(limiter: SlidingWindowLimiter, decision: Decision) -> HTTPException:
    log.info("rate limited %s: over %d per %gs", limiter.action, limiter.limit, limiter.window_s)
    return HTTPException(
        429,
        f"too many {limiter.action} requests for this tenant: at most {limiter.limit} "
        f"per {limiter.window_s:g} s",
        headers={"Retry-After": str(decision.retry_after_s)},
    )
