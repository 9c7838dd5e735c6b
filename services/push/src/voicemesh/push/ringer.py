"""A call's ring, from request to ringing, answer, end or miss.

``Ringer`` handles the call lifecycle events and push jobs the push service consumes: it
records the call as ringing, has ``voip.VoipPushes`` push to the user's phones, publishes
``CallRinging`` or ``CallFailed``, and stops the ring on an answer or an end.
``RingTimeouts`` is the background task that turns an unanswered ring into ``CallMissed``
and the missed-call text. Event ids are ``ids.derived_id(tenant, call_id, what)``: a retry
publishes the same id, which JetStream drops. So an event is published (and stored) first
and the call's state moves after: a failed publish leaves the state as it was, and the
retry (a redelivery, the next claim of the ring deadline) publishes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

from redis.exceptions import RedisError

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.errors import InvalidMessage, MeshError, UnavailableError
from voicemesh.common.contracts.events import (
    CallEnded,
    CallFailed,
    CallMissed,
    CallRequested,
    CallRinging,
    Envelope,
    FailureReason,
    PushJob,
    SmsJob,
)
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.common.runtime.publisher import trace_headers
from voicemesh.common.runtime.tasks import PeriodicTask
from voicemesh.common.runtime.tokens import issue_call_token
from voicemesh.push.calls import CLAIM_LEASE_S, CallStore, RingingCall
from voicemesh.push.devices import DeviceRecord, DeviceRegistry
from voicemesh.push.settings import PushSettings
from voicemesh.push.voip import VoipPushes, build_payload, failure

__all__ = ["PreparedRing", "Publish", "RingTimeouts", "Ringer"]

log = logging.getLogger(__name__)

SOURCE = "push"
#: How long a ring job without ``expires_at`` rings (CallRequested's default).
DEFAULT_JOB_RING_S = 30.0


Publish = Callable[[Envelope, str], Awaitable[None]]
#: What a ring job and the ``CallRequested`` it rings as have in common.
_JOB_RING_FIELDS = {"tenant", "call_id", "source", "user_id", "caller_name", "handle"}


@dataclass
class PreparedRing:
    """A ``CallRequested`` after ``Ringer.prepare``: its deadline, state and devices."""

    event: CallRequested
    deadline: float
    state: str = ""
    devices: list[DeviceRecord] | None = None


def _derived(tenant: str, call_id: str, what: str) -> dict[str, Any]:
    """The envelope of the event ``what`` that this service derives from a call: the same
    id on every retry, so JetStream drops a second publish."""
    return {
        "event_id": derived_id(tenant, call_id, what),
        "tenant": tenant,
        "call_id": call_id,
        "source": SOURCE,
    }


@dataclass(eq=False)
class Ringer:
    """Handles the lifecycle events and push jobs that ring, stop or miss a call."""

    settings: PushSettings
    _: KW_ONLY
    tenants: TenantRegistry
    devices: DeviceRegistry
    calls: CallStore
    voip: VoipPushes
    publish: Publish

    # -- lifecycle events -------------------------------------------------------------------

    async def ring(self, event: CallRequested) -> None:
        """Ring the user's phones for ``event`` (``prepare`` and ``ring_prepared`` for one)."""
        [prepared] = await self.prepare([event])
        await self.ring_prepared(prepared)

    async def prepare(self, events: list[CallRequested]) -> list[PreparedRing]:
        """Record each call as ringing and read its user's cached devices: one Redis round
        trip for the whole batch (cache misses then read the database)."""
        now = time.time()
        rings = [
            PreparedRing(e, now + min(e.ring_timeout_s, self.settings.ring_window_for(e.tenant)))
            for e in events
        ]
        redis = self.calls.redis
        for attempt in (1, 2):
            pipe = redis.pipeline(transaction=False)
            for ring in rings:
                e = ring.event
                self.calls.queue_begin(
                    pipe,
                    RingingCall(
                        e.tenant,
                        e.call_id,
                        "ringing",
                        e.user_id,
                        e.phone,
                        e.caller_name,
                        e.handle,
                        ring.deadline,
                    ),
                )
                self.devices.queue_cached(pipe, e.tenant, e.user_id)
            try:
                results = await pipe.execute(raise_on_error=False)
            except RedisError as exc:
                raise UnavailableError("call state store unavailable") from exc
            if attempt == 1 and self.calls.missing_script(results):
                await self.calls.load_scripts()  # Redis restarted and forgot them
                continue
            break
        for index, ring in enumerate(rings):
            state, cached = results[2 * index], results[2 * index + 1]
            if isinstance(state, Exception):
                raise UnavailableError(f"call state store failed: {type(state).__name__}")
            ring.state = state.decode() if isinstance(state, bytes) else str(state)
            if ring.state != "ringing":
                self.calls.forget(ring.event.tenant, ring.event.call_id)
            ring.devices = self.devices.from_cache(cached)
            if ring.devices is None and ring.state == "ringing":
                ring.devices = await self.devices.active_for_user(
                    ring.event.tenant, ring.event.user_id
                )
        return rings

    async def ring_prepared(self, ring: PreparedRing) -> None:
        event, deadline = ring.event, ring.deadline
        tenant, call_id = event.tenant, event.call_id
        if ring.state != "ringing":
            log.info("call %s is already %s; not ringing", call_id, ring.state)
            return
        devices = ring.devices or []
        if not devices:
            await self._fail(event, FailureReason.NO_DEVICES, "the user has no active device")
            return
        secret = self.settings.call_token_secret.get_secret_value()
        if len(secret) < 32:
            await self._fail(event, FailureReason.ERROR, "push has no call token secret")
            return
        window = deadline - time.time()
        token, claims = issue_call_token(
            secret,
            tenant,
            call_id,
            ttl_s=math.ceil(max(window, 0)) + 60,
            user_id=event.user_id,
        )
        tenant_info = self.tenants.get(tenant)
        display = (tenant_info.display_name if tenant_info else "") or tenant
        base = self.settings.gateway_public_url.rstrip("/")
        try:
            payload = build_payload(
                tenant=tenant,
                call_id=call_id,
                caller_name=event.caller_name or display,
                handle=event.handle or tenant,
                signaling_url=f"{base}/v1/{tenant}/calls/{call_id}/whip",
                call_token=token,
                call_token_expires_at=claims.expires_at,
                ring_until=deadline,
                traceparent=trace_headers().get("traceparent"),
            )
        except InvalidMessage as exc:
            await self._fail(event, FailureReason.INVALID_REQUEST, str(exc))
            return
        try:
            self.voip.check_clients(tenant, devices)
        except InvalidMessage as exc:
            await self._fail(event, FailureReason.PUSH_UNAVAILABLE, str(exc))
            return

        async def ringing(accepted: int) -> None:
            await self._ringing(tenant, call_id, deadline, accepted)

        outcomes = await self.voip.ring(devices, payload, deadline, ringing)
        if outcomes is not None:
            await self._fail(event, *failure(outcomes))

    async def _ringing(self, tenant: str, call_id: str, deadline: float, devices: int) -> None:
        """APNs took the push: arm the ring timeout and publish ``CallRinging``."""
        ringing = CallRinging(**_derived(tenant, call_id, "ringing"), devices=devices)
        # Both at once: the Redis write and the JetStream confirmation overlap.
        state, _ = await asyncio.gather(
            self.calls.accepted(tenant, call_id, deadline),
            self.publish(ringing, subjects.call_lifecycle(tenant, call_id)),
        )
        if state == "ended":
            # The call ended while the push was on its way: the phone may have reported
            # the call after the cancel push went out, so cancel once more.
            with contextlib.suppress(MeshError):
                await self.cancel(tenant, call_id)

    async def _fail(self, event: CallRequested, reason: FailureReason, detail: str) -> None:
        log.info("call %s could not ring: %s", event.call_id, reason.value)
        await self.publish(
            CallFailed(
                **_derived(event.tenant, event.call_id, "failed"),
                reason=reason,
                detail=detail,
            ),
            subjects.call_lifecycle(event.tenant, event.call_id),
        )
        # Only now: had the publish failed, the request's redelivery finds it still ringing.
        await self.calls.move(event.tenant, event.call_id, "ringing", "failed")

    async def answered(self, tenant: str, call_id: str) -> None:
        if await self.calls.move(tenant, call_id, "ringing", "answered"):
            await self.calls.unschedule(tenant, call_id)

    async def ended(self, event: CallEnded) -> None:
        tenant, call_id = event.tenant, event.call_id
        if await self._stop_ringing(tenant, call_id):
            await self.cancel(tenant, call_id)
            return
        # Not ringing: ended before we saw it requested (remember, so a late request does
        # not ring), or already answered/missed/failed/ended (nothing to do).
        if await self.calls.move(tenant, call_id, "", "ended"):
            return
        # A request created the call between the two moves: it is ringing now.
        if await self._stop_ringing(tenant, call_id):
            await self.cancel(tenant, call_id)

    async def _stop_ringing(self, tenant: str, call_id: str) -> bool:
        """Move a ringing call to ended and drop its ring deadline; ``False`` if it was not
        ringing."""
        if not await self.calls.move(tenant, call_id, "ringing", "ended"):
            return False
        await self.calls.unschedule(tenant, call_id)
        return True

    async def cancel(self, tenant: str, call_id: str, user_id: str | None = None) -> int:
        """The second VoIP push: the app reports the call and ends it at once. ``user_id``
        names whose phones to reach when this service never rang the call itself."""
        call = await self.calls.get(tenant, call_id)
        if call is None or not call.user_id:
            if user_id is None:
                return 0
            call = RingingCall(tenant, call_id, "", user_id, None, "", "", 0.0)
        return await self.voip.cancel(call)

    # -- push jobs (the PUSH work queue) -----------------------------------------------------

    async def job(self, job: PushJob) -> None:
        """A job from ``vm.<t>.push.voip``: ``ring`` rings the user's phones for the call as
        a ``CallRequested`` would (``CallRinging`` or ``CallFailed`` follow, a missed call
        after ``expires_at``); ``cancel`` sends the ending push and stops a ring this service
        started. A job past its ``expires_at`` is refused (dead-lettered with the reason)."""
        now = time.time()
        expires = job.expires_at.timestamp() if job.expires_at is not None else None
        if expires is not None and expires <= now:
            raise InvalidMessage(f"the {job.kind} job for call {job.call_id} expired")
        if job.kind == "cancel":
            await self._stop_ringing(job.tenant, job.call_id)
            await self.cancel(job.tenant, job.call_id, job.user_id)
            return
        ring_s = min(300.0, expires - now) if expires is not None else DEFAULT_JOB_RING_S
        # The job's ring as its request: the same call, user, caller name and handle.
        request = job.model_dump(include=_JOB_RING_FIELDS)
        await self.ring(CallRequested(**request, ring_timeout_s=ring_s))

    async def missed(self, tenant: str, call_id: str) -> bool:
        """The ring window closed without an answer: CallMissed, a cancel push, the text.

        ``ringing`` → ``missing`` decides the miss against a racing answer; the events are
        published (and stored) next, and only then is the call ``missed`` and its deadline
        removed. A replica that dies in between leaves the call ``missing`` and its deadline
        leased: the next claimer publishes the same events again, which JetStream drops.
        """
        if not await self.calls.move(tenant, call_id, "ringing", "missing"):
            if await self.calls.state(tenant, call_id) != "missing":
                await self.calls.unschedule(tenant, call_id)  # answered or ended meanwhile
                return False
        call = await self.calls.get(tenant, call_id)
        user_id = call.user_id if call else ""
        missed = CallMissed(**_derived(tenant, call_id, "missed"), user_id=user_id)
        await self.publish(missed, subjects.call_lifecycle(tenant, call_id))
        with contextlib.suppress(MeshError):
            await self.cancel(tenant, call_id)
        if call is not None and call.phone:
            caller = call.caller_name or tenant
            await self.publish(
                SmsJob(
                    **_derived(tenant, call_id, "missed-sms"),
                    idempotency_key=f"missed-call:{call_id}",
                    to=call.phone,
                    body=self.settings.missed_call_text.format(caller=caller),
                    purpose="missed_call",
                ),
                subjects.sms_outbound(tenant),
            )
        await self.calls.move(tenant, call_id, "missing", "missed")
        await self.calls.unschedule(tenant, call_id)
        return True


class RingTimeouts:
    """Owns the task that turns passed ring deadlines into missed calls. Every replica may
    run one: each claims passed deadlines with a lease (``CallStore.claim_expired``), so one
    replica handles each call while it lives, and another takes over if it dies."""

    def __init__(
        self, ringer: Ringer, *, interval_s: float = 0.2, lease_s: float = CLAIM_LEASE_S
    ) -> None:
        self._ringer = ringer
        self._lease_s = lease_s
        self._task = PeriodicTask(self.check, interval_s=interval_s, name="push-ring-timeouts")

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def check(self) -> None:
        """Mark every call whose ring deadline has passed missed (one round of the task)."""
        await self._ringer.calls.restore_if_lost()
        claimed = await self._ringer.calls.claim_expired(lease_s=self._lease_s)
        await asyncio.gather(*(self._miss(tenant, call_id) for tenant, call_id in claimed))

    async def _miss(self, tenant: str, call_id: str) -> None:
        try:
            await self._ringer.missed(tenant, call_id)
        except Exception as exc:
            log.warning("could not mark call %s missed (%s); retrying", call_id, type(exc).__name__)
            with contextlib.suppress(MeshError):  # else the lease runs out and it comes back
                await self._ringer.calls.schedule_timeout(tenant, call_id, time.time() + 1)
