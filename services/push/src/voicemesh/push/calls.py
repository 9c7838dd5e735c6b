"""Ringing calls in Redis: each call's state and the ring deadlines every replica shares.

State moves ``ringing`` → ``answered`` | ``ended`` | ``missing`` → ``missed`` | ``failed`` by
compare-and-set, so an answer racing the ring timeout has exactly one winner, on any
replica. Deadlines sit in one sorted set. A replica claims a passed deadline with a lease
(its score moves ``lease_s`` ahead, atomically), and removes it only once the miss is
published: a replica that dies in between leaves the deadline to come due again, and the
next claimer finishes the miss (``missing``: decided, not yet published).

The ringing hot path batches: ``queue_begin`` goes on the caller's pipeline (one round trip
for a fetch of requests) and ``accepted`` coalesces the calls APNs took in the same
event-loop turn, so Redis costs a round trip per batch, not several per call.

Redis holds this state without persistence. Each process also remembers the calls it is
ringing, and ``restore_if_lost`` (run by the ring-timeout loop) writes them back when a
marker key has vanished — Redis restarted empty — so a ringing call still ends at its
deadline instead of ringing forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError

from voicemesh.common.contracts.errors import UnavailableError

__all__ = ["CallState", "CallStore", "RingingCall"]

log = logging.getLogger(__name__)

CallState = Literal["ringing", "answered", "ended", "missing", "missed", "failed"]

#: Set the state to ARGV[2] if it is ARGV[1] (or absent when ARGV[1] is ""); 1 if it moved.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if (ARGV[1] == '' and not current) or current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
#: Create the call (state ringing + its fields) unless it exists; returns the state now.
_BEGIN = """
local current = redis.call('HGET', KEYS[1], 'state')
if current then
  return current
end
redis.call('HSET', KEYS[1], 'state', 'ringing', unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 'ringing'
"""
#: Lease the deadlines due by ARGV[1] (at most ARGV[3]) until ARGV[2]; returns them.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
"""
KEEP_S = 3600
#: How long a claim on a passed ring deadline lasts before another replica may take it.
CLAIM_LEASE_S = 15.0
#: Present while Redis still holds what this service wrote; gone after a restart empty.
MARKER = "voicemesh:push:alive"
RESTORE_GRACE_S = 60.0


@dataclass(frozen=True)
class RingingCall:
    tenant: str
    call_id: str
    state: str
    user_id: str
    phone: str | None
    caller_name: str
    handle: str
    deadline: float


class CallStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._redis = redis
        self._transition = redis.register_script(_TRANSITION)
        self._begin = redis.register_script(_BEGIN)
        self._claim = redis.register_script(_CLAIM)
        self._accepted: list[tuple[str, str, float, asyncio.Future[str | None]]] = []
        self._flusher: asyncio.Future[None] | None = None
        # The calls this process began ringing, to write back if Redis loses them.
        self._mine: dict[tuple[str, str], RingingCall] = {}

    @staticmethod
    def _key(tenant: str, call_id: str) -> str:
        return f"voicemesh:push:call:{tenant}:{call_id}"

    DEADLINES = "voicemesh:push:ring-deadlines"

    async def load_scripts(self) -> None:
        """Make sure Redis knows the scripts ``queue_begin`` calls by hash (EVALSHA)."""
        try:
            await self._redis.script_load(_BEGIN)
            await self._redis.script_load(_TRANSITION)
        except RedisError as exc:
            raise UnavailableError("call state store unavailable") from exc

    def queue_begin(self, pipe: Pipeline, call: RingingCall) -> None:
        """Queue the start of ``call``'s ring on ``pipe`` (unless the call exists); its
        result is the call's state (bytes) now."""
        self._mine[(call.tenant, call.call_id)] = call
        # EVALSHA, not the registered Script: a Script on a pipeline makes every execute
        # ask SCRIPT EXISTS first, a second round trip for each batch.
        fields = [part for pair in _fields(call) for part in pair]
        pipe.evalsha(self._begin.sha, 1, self._key(call.tenant, call.call_id), KEEP_S, *fields)

    async def accepted(self, tenant: str, call_id: str, deadline: float) -> str | None:
        """Arm the ring deadline of a call APNs took; returns the call's state now (an end
        may have raced the push).

        Calls accepted in the same event-loop turn (APNs answers arrive in bursts) share
        one pipeline: one Redis round trip for all of them.
        """
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._accepted.append((tenant, call_id, deadline, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_accepted())
        return await future

    async def _flush_accepted(self) -> None:
        await asyncio.sleep(0)  # let this turn's other answers join the batch
        batch, self._accepted = self._accepted, []
        self._flusher = None
        pipe = self._redis.pipeline(transaction=False)
        for tenant, call_id, deadline, _ in batch:
            pipe.zadd(self.DEADLINES, {json.dumps([tenant, call_id]): deadline})
            pipe.hget(self._key(tenant, call_id), "state")
        try:
            results = await pipe.execute()
        except (RedisError, OSError) as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(UnavailableError("call state store unavailable"))
            log.warning("could not arm %d ring deadlines: %s", len(batch), type(exc).__name__)
            return
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        for index, (*_, future) in enumerate(batch):
            if not future.done():
                future.set_result(_text(results[2 * index + 1]))

    @staticmethod
    def missing_script(results: list[Any]) -> bool:
        return any(isinstance(r, NoScriptError) for r in results)

    async def move(self, tenant: str, call_id: str, src: str, dst: CallState) -> bool:
        if dst not in ("ringing", "missing"):
            self.forget(tenant, call_id)  # settled: nothing to restore
        try:
            moved = await self._transition(
                keys=[self._key(tenant, call_id)], args=[src, dst, KEEP_S]
            )
        except RedisError as exc:
            raise UnavailableError("call state store unavailable") from exc
        return bool(moved)

    async def state(self, tenant: str, call_id: str) -> str | None:
        try:
            return _text(await self._redis.hget(self._key(tenant, call_id), "state"))
        except RedisError as exc:
            raise UnavailableError("call state store unavailable") from exc

    async def get(self, tenant: str, call_id: str) -> RingingCall | None:
        try:
            raw: dict[Any, Any] = await self._redis.hgetall(self._key(tenant, call_id))
        except RedisError as exc:
            raise UnavailableError("call state store unavailable") from exc
        if not raw:
            return None
        data = {_text(k): _text(v) for k, v in raw.items()}
        return RingingCall(
            tenant,
            call_id,
            data.get("state") or "",
            data.get("user_id") or "",
            data.get("phone") or None,
            data.get("caller_name") or "",
            data.get("handle") or "",
            float(data.get("deadline") or 0),
        )

    async def schedule_timeout(self, tenant: str, call_id: str, deadline: float) -> None:
        try:
            await self._redis.zadd(self.DEADLINES, {json.dumps([tenant, call_id]): deadline})
        except RedisError as exc:
            raise UnavailableError("call state store unavailable") from exc

    async def unschedule(self, tenant: str, call_id: str) -> None:
        try:
            await self._redis.zrem(self.DEADLINES, json.dumps([tenant, call_id]))
        except RedisError as exc:
            raise UnavailableError("call state store unavailable") from exc

    async def claim_expired(
        self, now: float | None = None, limit: int = 100, *, lease_s: float = CLAIM_LEASE_S
    ) -> list[tuple[str, str]]:
        """Deadlines that passed, leased to this caller for ``lease_s``, as (tenant, call).

        The lease only holds the deadline back from other claimers: ``unschedule`` it once
        the call is settled, or it comes due again when the lease ends.
        """
        now = time.time() if now is None else now
        try:
            due: list[Any] = await self._claim(
                keys=[self.DEADLINES], args=[repr(now), repr(now + lease_s), limit]
            )
        except RedisError as exc:
            raise UnavailableError("call state store unavailable") from exc
        claimed = []
        for member in due:
            tenant, call_id = json.loads(member)
            claimed.append((str(tenant), str(call_id)))
        return claimed

    def forget(self, tenant: str, call_id: str) -> None:
        """Not ringing after all (it ended before it was requested): nothing to restore."""
        self._mine.pop((tenant, call_id), None)

    async def restore_if_lost(self, now: float | None = None) -> int:
        """If Redis lost this service's state, write back the calls this process is ringing.

        Returns how many calls were restored. A call whose deadline passed a while ago has
        been handled (missed, or answered on another replica) and is forgotten; one whose
        deadline passed while Redis was away is restored and times out at once.
        """
        now = time.time() if now is None else now
        for key, call in list(self._mine.items()):
            if call.deadline + RESTORE_GRACE_S < now:
                del self._mine[key]
        if await self._redis.exists(MARKER):
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for call in self._mine.values():
            name = self._key(call.tenant, call.call_id)
            # Only where nothing is recorded: another replica may have written it already.
            pipe.hsetnx(name, "state", "ringing")
            for field, value in _fields(call):
                pipe.hsetnx(name, field, value)
            pipe.expire(name, KEEP_S)
            member = json.dumps([call.tenant, call.call_id])
            pipe.zadd(self.DEADLINES, {member: call.deadline}, nx=True)
        pipe.set(MARKER, "1")
        await pipe.execute()
        if self._mine:
            log.warning("Redis lost the ringing calls; restored %d", len(self._mine))
        return len(self._mine)


def _fields(call: RingingCall) -> list[tuple[str, str]]:
    """What the call's hash holds besides its state."""
    return [
        ("user_id", call.user_id),
        ("phone", call.phone or ""),
        ("caller_name", call.caller_name),
        ("handle", call.handle),
        ("deadline", repr(call.deadline)),
    ]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
