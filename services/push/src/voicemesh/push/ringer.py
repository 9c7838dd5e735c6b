"""Ringing a user's phones for a call: the VoIP push, APNs answers, ring timeout, cancel.

``Ringer`` handles the call lifecycle events the push service consumes; ``RingTimeouts``
is the background task that turns an unanswered ring into ``CallMissed`` and the
missed-call text. Both publish through the service's ``JetStreamPublisher``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.common.runtime.telemetry import inject_trace_headers
from voicemesh.common.runtime.tokens import issue_call_token
from voicemesh.push.apns import ApnsPool, PushResult
from voicemesh.push.calls import CallStore, RingingCall
from voicemesh.push.devices import DeviceRecord, DeviceRegistry
from voicemesh.push.settings import PushSettings

__all__ = [
    "MAX_VOIP_PAYLOAD",
    "PreparedRing",
    "Publish",
    "RingTimeouts",
    "Ringer",
    "build_payload",
    "callkit_uuid",
]

log = logging.getLogger(__name__)

MAX_VOIP_PAYLOAD = 5120
RETRY_STATUSES = frozenset({0, 429, 500, 502, 503, 504})
DEACTIVATE = {
    (400, "BadDeviceToken"),
    (400, "DeviceTokenNotForTopic"),
    (410, "Unregistered"),
    (410, "ExpiredToken"),
}
SOURCE = "push"
#: How long a ring job without ``expires_at`` rings (CallRequested's default).
DEFAULT_JOB_RING_S = 30.0


def callkit_uuid(tenant: str, call_id: str) -> str:
    """The RFC 4122 UUID CallKit reports the call under: the call id when it is one."""
    with contextlib.suppress(ValueError):
        return str(uuid.UUID(hex=call_id))
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"voicemesh:{tenant}:{call_id}"))


def build_payload(
    *,
    tenant: str,
    call_id: str,
    caller_name: str,
    handle: str,
    action: str = "ring",
    signaling_url: str | None = None,
    call_token: str | None = None,
    call_token_expires_at: int | None = None,
    ring_until: float | None = None,
    traceparent: str | None = None,
) -> dict[str, Any]:
    """The VoIP payload: what CallKit (and react-native-callkeep) read, plus how to answer.

    Everything the app needs to report the call is in it, so the app reports at once
    (iOS kills apps that do not report a call for every VoIP push), even for a cancel.
    """
    payload: dict[str, Any] = {
        "aps": {},
        "uuid": callkit_uuid(tenant, call_id),
        "handle": handle,
        "handleType": "generic",
        "callerName": caller_name,
        "hasVideo": False,
        "action": action,
        "call_id": call_id,
        "tenant": tenant,
    }
    if signaling_url is not None:
        payload["signaling_url"] = signaling_url
    if call_token is not None:
        payload["call_token"] = call_token
        payload["call_token_expires_at"] = call_token_expires_at
    if ring_until is not None:
        payload["ring_until"] = math.floor(ring_until)
    if traceparent is not None:
        # The app sends it back with its offer, so the answered call joins this trace.
        payload["traceparent"] = traceparent
    size = len(json.dumps(payload, ensure_ascii=False).encode())
    if size > MAX_VOIP_PAYLOAD:
        raise InvalidMessage(f"VoIP payload is {size} bytes, over Apple's {MAX_VOIP_PAYLOAD}")
    return payload


def _per_device(call_uuid: str, token: str) -> str:
    # aioapns matches answers by apns-id, so concurrent pushes need distinct ones; derived
    # from the CallKit UUID, they still correlate with the call in APNs logs.
    return str(uuid.uuid5(uuid.UUID(call_uuid), token))


Publish = Callable[[Envelope, str], Awaitable[None]]


@dataclass
class PreparedRing:
    """A ``CallRequested`` after ``Ringer.prepare``: its deadline, state and devices."""

    event: CallRequested
    deadline: float
    state: str = ""
    devices: list[DeviceRecord] | None = None


@dataclass
class _DeviceOutcome:
    device: DeviceRecord
    result: PushResult
    attempts: int


class Ringer:
    def __init__(
        self,
        settings: PushSettings,
        *,
        tenants: TenantRegistry,
        devices: DeviceRegistry,
        apns: ApnsPool,
        calls: CallStore,
        publish: Publish,
    ) -> None:
        self.settings = settings
        self.tenants = tenants
        self.devices = devices
        self.apns = apns
        self.calls = calls
        self.publish = publish
        self._random = random.Random()  # noqa: S311 - jitter, not security

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
                    e.tenant,
                    e.call_id,
                    user_id=e.user_id,
                    phone=e.phone,
                    caller_name=e.caller_name,
                    handle=e.handle,
                    deadline=ring.deadline,
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
                traceparent=inject_trace_headers().get("traceparent"),
            )
        except InvalidMessage as exc:
            await self._fail(event, FailureReason.INVALID_REQUEST, str(exc))
            return
        apns_id = payload["uuid"]
        try:
            for device in devices:
                self.apns.client(tenant, device.environment)
        except InvalidMessage as exc:
            await self._fail(event, FailureReason.PUSH_UNAVAILABLE, str(exc))
            return

        if len(devices) == 1:
            # The common case, without a task per device: push, then tell the call it rings.
            outcome = await self._push(devices[0], payload, apns_id, deadline, None)
            if outcome.result.ok:
                await self._ringing(tenant, call_id, deadline, 1)
                return
            outcomes = [outcome]
        else:
            every = await self._push_all(tenant, call_id, devices, payload, apns_id, deadline)
            if every is None:
                return
            outcomes = every
        reasons = sorted({f"{o.result.status} {o.result.reason}" for o in outcomes})
        retryable = any(o.result.status in RETRY_STATUSES for o in outcomes)
        reason = FailureReason.PUSH_UNAVAILABLE if retryable else FailureReason.PUSH_REJECTED
        await self._fail(event, reason, "; ".join(reasons)[:500])

    async def _push_all(
        self,
        tenant: str,
        call_id: str,
        devices: list[DeviceRecord],
        payload: dict[str, Any],
        apns_id: str,
        deadline: float,
    ) -> list[_DeviceOutcome] | None:
        """Push to every device at once; ringing as soon as one accepts (then ``None``),
        else every device's outcome."""
        accepted = asyncio.Event()
        tasks = [
            asyncio.create_task(self._push(d, payload, apns_id, deadline, accepted))
            for d in devices
        ]
        waiter = asyncio.create_task(accepted.wait())
        try:
            await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            while not accepted.is_set() and not all(t.done() for t in tasks):
                await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            if accepted.is_set():
                ringing = sum(1 for t in tasks if t.done() and t.result().result.ok) or 1
                await self._ringing(tenant, call_id, deadline, ringing)
            outcomes = await asyncio.gather(*tasks)
        finally:
            waiter.cancel()
            for task in tasks:
                task.cancel()
        return None if accepted.is_set() else list(outcomes)

    async def _ringing(self, tenant: str, call_id: str, deadline: float, devices: int) -> None:
        """APNs took the push: arm the ring timeout and publish ``CallRinging``."""
        ringing = CallRinging(
            event_id=f"{call_id}-ringing",
            tenant=tenant,
            call_id=call_id,
            source=SOURCE,
            devices=devices,
        )
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

    async def _push(
        self,
        device: DeviceRecord,
        payload: dict[str, Any],
        apns_id: str,
        deadline: float,
        accepted: asyncio.Event | None,
    ) -> _DeviceOutcome:
        """Push to one device, retrying 429/5xx/no-answer with jitter while it can ring."""
        tenant, call_id = payload["tenant"], payload["call_id"]
        client = self.apns.client(tenant, device.environment)
        topic = f"{device.bundle_id}.voip"
        apns_id = _per_device(apns_id, device.token)
        attempt = 0
        while True:
            attempt += 1
            generation = client.generation
            remaining = deadline - time.time()
            result = await client.send(
                device.token,
                payload,
                topic=topic,
                apns_id=apns_id,
                timeout_s=max(0.05, min(self.settings.apns_timeout_s, remaining)),
            )
            if result.ok:
                if accepted is not None:
                    accepted.set()
                return _DeviceOutcome(device, result, attempt)
            if result.status == 403 and result.reason == "ExpiredProviderToken":
                await client.renew_provider_token(generation)
                if attempt < 3:
                    continue
            if (result.status, result.reason) in DEACTIVATE:
                stamp = result.timestamp_ms if result.status == 410 else None
                if await self.devices.deactivate(
                    tenant, device.token, str(result.reason), not_registered_after_ms=stamp
                ):
                    log.info("deactivated a device of tenant %s: %s", tenant, result.reason)
                return _DeviceOutcome(device, result, attempt)
            if result.status not in RETRY_STATUSES:
                log.warning("APNs refused a push for tenant %s: %s", tenant, result.reason)
                return _DeviceOutcome(device, result, attempt)
            delay = self._backoff(attempt)
            if time.time() + delay >= deadline - 0.05:
                return _DeviceOutcome(device, result, attempt)
            if await self.calls.state(tenant, call_id) != "ringing":
                return _DeviceOutcome(device, result, attempt)
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        cap = min(self.settings.apns_retry_max_s, self.settings.apns_retry_base_s * 2**attempt)
        return self._random.uniform(cap / 2, cap)

    async def _fail(self, event: CallRequested, reason: FailureReason, detail: str) -> None:
        await self.calls.move(event.tenant, event.call_id, "ringing", "failed")
        log.info("call %s could not ring: %s", event.call_id, reason.value)
        await self.publish(
            CallFailed(
                event_id=f"{event.call_id}-failed",
                tenant=event.tenant,
                call_id=event.call_id,
                source=SOURCE,
                reason=reason,
                detail=detail,
            ),
            subjects.call_lifecycle(event.tenant, event.call_id),
        )

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
        payload = build_payload(
            tenant=tenant,
            call_id=call_id,
            caller_name=call.caller_name or tenant,
            handle=call.handle or tenant,
            action="cancel",
        )
        apns_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"voicemesh:cancel:{tenant}:{call_id}"))
        sent = 0
        for device in await self.devices.active_for_user(tenant, call.user_id):
            result = await self.apns.client(tenant, device.environment).send(
                device.token,
                payload,
                topic=f"{device.bundle_id}.voip",
                apns_id=_per_device(apns_id, device.token),
            )
            sent += int(result.ok)
        return sent

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
        await self.ring(
            CallRequested(
                tenant=job.tenant,
                call_id=job.call_id,
                source=job.source,
                user_id=job.user_id,
                caller_name=job.caller_name,
                handle=job.handle,
                ring_timeout_s=ring_s,
            )
        )

    async def missed(self, tenant: str, call_id: str) -> bool:
        """The ring window closed without an answer: CallMissed, a cancel push, the text."""
        if not await self.calls.move(tenant, call_id, "ringing", "missed"):
            return False
        call = await self.calls.get(tenant, call_id)
        user_id = call.user_id if call else ""
        await self.publish(
            CallMissed(
                event_id=f"{call_id}-missed",
                tenant=tenant,
                call_id=call_id,
                source=SOURCE,
                user_id=user_id,
            ),
            subjects.call_lifecycle(tenant, call_id),
        )
        with contextlib.suppress(MeshError):
            await self.cancel(tenant, call_id)
        if call is not None and call.phone:
            caller = call.caller_name or tenant
            await self.publish(
                SmsJob(
                    event_id=f"{call_id}-missed-sms",
                    tenant=tenant,
                    call_id=call_id,
                    source=SOURCE,
                    idempotency_key=f"missed-call:{call_id}",
                    to=call.phone,
                    body=self.settings.missed_call_text.format(caller=caller),
                    purpose="missed_call",
                ),
                subjects.sms_outbound(tenant),
            )
        return True


class RingTimeouts:
    """Owns the task that turns passed ring deadlines into missed calls (every replica may
    run one; the sorted-set removal decides which one handles each call)."""

    def __init__(self, ringer: Ringer, *, interval_s: float = 0.2) -> None:
        self._ringer = ringer
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="push-ring-timeouts")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self._ringer.calls.restore_if_lost()
                for tenant, call_id in await self._ringer.calls.claim_expired():
                    try:
                        await self._ringer.missed(tenant, call_id)
                    except Exception:
                        log.exception("could not mark call %s missed; retrying", call_id)
                        await self._ringer.calls.schedule_timeout(tenant, call_id, time.time() + 1)
            except Exception:
                log.warning("ring timeout check failed; trying again", exc_info=True)
            await asyncio.sleep(self._interval)
