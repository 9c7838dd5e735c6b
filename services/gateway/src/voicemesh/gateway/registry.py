"""The call registry the gateway workers share in Redis.

* ``hold_token`` / ``spend_token`` / ``release_token``: a call token connects once. An
  offer holds it while it is negotiated (``SET NX`` on its id, briefly); an answered offer
  spends it (kept until the token expires); a refused one releases it, so the phone can
  try again with the same token.
* call records: which worker owns a call, whether the gateway created it (a call
  the gateway did not create arrived by VoIP push, so its offer means "answered"), and
  the phone its tenant backend vouched for when it created it (for ``CallConnected``).
* worker records: each worker's internal URL and load, refreshed by a heartbeat, so any
  worker can forward an offer to one with free capacity or say ``503`` when all are full,
  and forward a live call's signaling to the worker that holds it (``forward``).
* lost workers: each worker's live calls are also listed under it. A worker that died
  without deregistering (killed, its node lost) stops its heartbeat; once it is
  ``lost_after_s`` old, one live worker claims it (the ``HDEL`` of its record succeeds for
  one claimant only) and ends its calls (``on_lost``). A worker claims others only after
  its own heartbeat has reached Redis for that long: after a Redis outage every record is
  old, and the living must first have had the time to refresh theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from voicemesh.gateway._tasks import cancel_and_wait

__all__ = ["CallRecord", "Registry", "WorkerInfo"]

log = logging.getLogger(__name__)

PREFIX = "voicemesh:gateway"
WORKER_STALE_S = 6.0
HEARTBEAT_S = 1.0
LOST_AFTER_S = 15.0
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


OnLost = Callable[[list[CallRecord]], Awaitable[None]]


class Registry:
    """Redis-backed; every method but ``claim_lost`` is one or two round trips."""

    def __init__(
        self,
        redis: Redis,
        worker: WorkerInfo,
        *,
        lost_after_s: float = LOST_AFTER_S,
        on_lost: OnLost | None = None,
    ) -> None:
        self._redis = redis
        self.worker = worker
        self._active = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost_after_s = lost_after_s
        self._on_lost = on_lost
        #: Since when this worker's heartbeats have reached Redis without a failure.
        self._reachable_since: float | None = None
        self._looked_for_lost = 0.0

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
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
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
            pipe.expire(key, CALL_TTL_S)
            if record.state == "live" and record.worker_id:
                pipe.sadd(_calls_of(record.worker_id), record.call_id)
                pipe.expire(_calls_of(record.worker_id), CALL_TTL_S)
            await pipe.execute()

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

    async def call_ended(self, call_id: str) -> None:
        """A call of this worker has ended: no worker forwards to it, none reaps it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{PREFIX}:call:{call_id}", "state", "ended")
            pipe.srem(_calls_of(self.worker.worker_id), call_id)
            await pipe.execute()

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

    async def workers(self, *, fresh_s: float = WORKER_STALE_S) -> list[WorkerInfo]:
        """The workers heard from in the last ``fresh_s`` seconds (``inf``: all recorded)."""
        raw = await self._redis.hgetall(f"{PREFIX}:workers")
        now = time.time()
        out = []
        for key, value in raw.items():
            info = json.loads(value)
            if now - float(info["seen"]) > fresh_s:
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

    async def claim_lost(self) -> list[CallRecord]:
        """The live calls of the workers lost for ``lost_after_s``, each claimed by this
        worker alone and marked ended (empty while this worker's own heartbeat is young)."""
        now = time.time()
        if self._reachable_since is None or now - self._reachable_since < self._lost_after_s:
            return []
        recorded = await self.workers(fresh_s=math.inf)
        claimed: list[CallRecord] = []
        for lost in recorded:
            before = len(claimed)
            if now - lost.seen <= self._lost_after_s or lost.worker_id == self.worker.worker_id:
                continue
            if not await self._redis.hdel(f"{PREFIX}:workers", lost.worker_id):
                continue  # another worker claimed it first
            members = await self._redis.smembers(_calls_of(lost.worker_id))
            for call_id in sorted(_text(m) for m in members):
                record = await self.get_call(call_id)
                if record and record.state == "live" and record.worker_id == lost.worker_id:
                    await self.set_call_state(call_id, "ended")
                    claimed.append(record)
            await self._redis.delete(_calls_of(lost.worker_id))
            log.warning(
                "worker %s was lost with %d live calls", lost.worker_id, len(claimed) - before
            )
        return claimed

    async def set_call_state(self, call_id: str, state: str) -> None:
        await self._redis.hset(f"{PREFIX}:call:{call_id}", "state", state)

    async def live_worker(self, worker_id: str) -> WorkerInfo | None:
        """The worker ``worker_id`` while its heartbeat is fresh, else ``None``."""
        return next((w for w in await self.workers() if w.worker_id == worker_id), None)

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
        self._reachable_since = time.time()
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
                self._reachable_since = None
                log.warning("worker heartbeat failed: %s", type(exc).__name__)
                continue
            if self._reachable_since is None:
                self._reachable_since = time.time()
            if (
                self._on_lost is not None
                and time.monotonic() - self._looked_for_lost >= HEARTBEAT_S
            ):
                self._looked_for_lost = time.monotonic()
                try:
                    lost = await self.claim_lost()
                    if lost:
                        await self._on_lost(lost)
                except Exception:
                    log.exception("ending the calls of a lost worker failed")


def _calls_of(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}:calls"


def _token_key(token_id: str) -> str:
    return f"{PREFIX}:token:{token_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
