"""The call registry the gateway workers share in Redis.

* ``hold_token`` / ``spend_token`` / ``release_token``: a call token connects once. An
  offer holds it while it is negotiated (``SET NX`` on its id, briefly); an answered offer
  spends it (kept until the token expires); a refused one releases it, so the phone can
  try again with the same token.
* call records: which worker owns a call, whether the gateway created it (a call
  the gateway did not create arrived by VoIP push, so its offer means "answered"), and
  the phone its tenant backend vouched for when it created it (for ``CallConnected``).
* worker records: each worker's URL and load, refreshed by a heartbeat, so any worker can
  send a caller to one with free capacity (WHIP ``307``) or say ``503`` when all are full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from voicemesh.gateway._tasks import cancel_and_wait

__all__ = ["CallRecord", "Registry", "WorkerInfo"]

log = logging.getLogger(__name__)

PREFIX = "voicemesh:gateway"
WORKER_STALE_S = 6.0
HEARTBEAT_S = 1.0
CALL_TTL_S = 24 * 3600
#: Longer than any negotiation (ICE gathering is bounded by aiortc's timeouts).
TOKEN_HOLD_S = 60
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    url: str
    active: int
    limit: int
    seen: float

    @property
    def free(self) -> int:
        return self.limit - self.active


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    tenant: str
    origin: str  # "created" (POST /calls) or "push"
    worker_id: str = ""
    worker_url: str = ""
    state: str = "created"  # created | live | ended
    phone: str | None = None  # E.164, vouched for with the tenant's API key


class Registry:
    """Redis-backed; every method is one or two round trips."""

    def __init__(self, redis: Redis, worker: WorkerInfo) -> None:
        self._redis = redis
        self.worker = worker
        self._active = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- tokens ------------------------------------------------------------------------------

    async def hold_token(self, token_id: str, call_id: str) -> str | None:
        """Hold a token for one offer's negotiation: the hold's id, or ``None`` if taken."""
        hold = f"{call_id}:{secrets.token_hex(8)}"
        ok = await self._redis.set(_token_key(token_id), hold, nx=True, ex=TOKEN_HOLD_S)
        return hold if ok else None

    async def spend_token(self, token_id: str, expires_at: int) -> None:
        """The offer was answered: the token stays used until it has expired."""
        ttl = max(1, expires_at - int(time.time()) + 60)
        await self._redis.expire(_token_key(token_id), ttl)

    async def release_token(self, token_id: str, hold: str) -> None:
        """The offer was refused: free the token again, if ``hold`` still holds it."""
        await self._redis.eval(_RELEASE, 1, _token_key(token_id), hold)

    # -- calls -------------------------------------------------------------------------------

    async def put_call(self, record: CallRecord) -> None:
        key = f"{PREFIX}:call:{record.call_id}"
        await self._redis.hset(
            key,
            mapping={
                "tenant": record.tenant,
                "origin": record.origin,
                "worker_id": record.worker_id,
                "worker_url": record.worker_url,
                "state": record.state,
                "phone": record.phone or "",
            },
        )
        await self._redis.expire(key, CALL_TTL_S)

    async def get_call(self, call_id: str) -> CallRecord | None:
        raw = await self._redis.hgetall(f"{PREFIX}:call:{call_id}")
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return CallRecord(
            call_id=call_id,
            tenant=fields.get("tenant", ""),
            origin=fields.get("origin", "push"),
            worker_id=fields.get("worker_id", ""),
            worker_url=fields.get("worker_url", ""),
            state=fields.get("state", "created"),
            phone=fields.get("phone") or None,
        )

    async def set_call_state(self, call_id: str, state: str) -> None:
        await self._redis.hset(f"{PREFIX}:call:{call_id}", "state", state)

    # -- workers -----------------------------------------------------------------------------

    def set_active(self, active: int) -> None:
        """Record this worker's load; the heartbeat publishes it at once."""
        self._active = active
        self._changed.set()

    async def publish_worker(self) -> None:
        info = {
            "url": self.worker.url,
            "active": self._active,
            "limit": self.worker.limit,
            "seen": time.time(),
        }
        await self._redis.hset(f"{PREFIX}:workers", self.worker.worker_id, json.dumps(info))

    async def workers(self) -> list[WorkerInfo]:
        raw = await self._redis.hgetall(f"{PREFIX}:workers")
        now = time.time()
        out = []
        for key, value in raw.items():
            info = json.loads(value)
            if now - float(info["seen"]) > WORKER_STALE_S:
                continue
            out.append(
                WorkerInfo(
                    _text(key),
                    str(info["url"]),
                    int(info["active"]),
                    int(info["limit"]),
                    float(info["seen"]),
                )
            )
        return out

    async def worker_with_room(self, *, exclude_self: bool) -> WorkerInfo | None:
        """The live worker with the most free call slots, or ``None`` when all are full."""
        candidates = [
            w
            for w in await self.workers()
            if w.free > 0 and not (exclude_self and w.worker_id == self.worker.worker_id)
        ]
        return max(candidates, key=lambda w: (w.free, w.worker_id), default=None)

    async def start(self) -> None:
        await self.publish_worker()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat(), name="heartbeat")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self._redis.hdel(f"{PREFIX}:workers", self.worker.worker_id)
        except Exception as exc:
            log.warning("could not deregister the worker: %s", type(exc).__name__)

    async def _heartbeat(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # lands as the event fires, and stop() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self.publish_worker()
            except Exception as exc:  # Redis blips must not end calls
                log.warning("worker heartbeat failed: %s", type(exc).__name__)


def _token_key(token_id: str) -> str:
    return f"{PREFIX}:token:{token_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
