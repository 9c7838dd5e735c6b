"""The VoIP pushes of a call: the payload CallKit reads, and its delivery to a user's phones.

``VoipPushes.ring`` pushes to every device at once, retrying 429, 5xx and no answer with
jitter while the call can still ring, and deactivating the tokens APNs says are gone; it
reports ringing as soon as one device takes the push. ``VoipPushes.cancel`` sends the
second push, which makes the phone report the call and end it at once.
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
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from voicemesh.common.contracts.errors import InvalidMessage
from voicemesh.common.contracts.events import FailureReason
from voicemesh.push.apns import ApnsPool, PushResult
from voicemesh.push.calls import CallStore, RingingCall
from voicemesh.push.devices import DeviceRecord, DeviceRegistry
from voicemesh.push.settings import PushSettings

__all__ = [
    "MAX_VOIP_PAYLOAD",
    "DeviceOutcome",
    "VoipPushes",
    "build_payload",
    "callkit_uuid",
    "failure",
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

#: Called with how many devices took the ring push, as soon as the first one does.
OnRinging = Callable[[int], Awaitable[None]]


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


@dataclass
class DeviceOutcome:
    device: DeviceRecord
    result: PushResult
    attempts: int


def failure(outcomes: list[DeviceOutcome]) -> tuple[FailureReason, str]:
    """Why no device rang: unavailable if any answer may clear up, else rejected."""
    reasons = sorted({f"{o.result.status} {o.result.reason}" for o in outcomes})
    retryable = any(o.result.status in RETRY_STATUSES for o in outcomes)
    reason = FailureReason.PUSH_UNAVAILABLE if retryable else FailureReason.PUSH_REJECTED
    return reason, "; ".join(reasons)[:500]


@dataclass(eq=False)
class VoipPushes:
    """Sends ring and cancel pushes through each tenant's APNs clients."""

    settings: PushSettings
    _: KW_ONLY
    apns: ApnsPool
    devices: DeviceRegistry
    calls: CallStore
    #: backoff jitter (not security: a plain pseudo-random generator will do)
    _random: random.Random = field(default_factory=random.Random, init=False)

    def check_clients(self, tenant: str, devices: list[DeviceRecord]) -> None:
        """Raise ``InvalidMessage`` if a device's environment has no APNs client."""
        for device in devices:
            self.apns.client(tenant, device.environment)

    async def ring(
        self,
        devices: list[DeviceRecord],
        payload: dict[str, Any],
        deadline: float,
        on_ringing: OnRinging,
    ) -> list[DeviceOutcome] | None:
        """Push ``payload`` to ``devices``; ``None`` once one took it (and ``on_ringing``
        has run), else every device's outcome."""
        if len(devices) == 1:
            # The common case, without a task per device: push, then tell the call it rings.
            outcome = await self._push(devices[0], payload, deadline, None)
            if not outcome.result.ok:
                return [outcome]
            await on_ringing(1)
            return None
        accepted = asyncio.Event()
        tasks = [asyncio.create_task(self._push(d, payload, deadline, accepted)) for d in devices]
        waiter = asyncio.create_task(accepted.wait())
        try:
            await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            while not accepted.is_set() and not all(t.done() for t in tasks):
                await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            if accepted.is_set():
                await on_ringing(sum(1 for t in tasks if t.done() and t.result().result.ok) or 1)
            outcomes = await asyncio.gather(*tasks)
        finally:
            waiter.cancel()
            for task in tasks:
                task.cancel()
        return None if accepted.is_set() else list(outcomes)

    async def cancel(self, call: RingingCall) -> int:
        """The cancel push to every active device of the call's user; how many took it."""
        tenant, call_id = call.tenant, call.call_id
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

    async def _push(
        self,
        device: DeviceRecord,
        payload: dict[str, Any],
        deadline: float,
        accepted: asyncio.Event | None,
    ) -> DeviceOutcome:
        """Push to one device, retrying 429/5xx/no-answer with jitter while it can ring."""
        tenant, call_id = payload["tenant"], payload["call_id"]
        client = self.apns.client(tenant, device.environment)
        topic = f"{device.bundle_id}.voip"
        apns_id = _per_device(payload["uuid"], device.token)
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
                return DeviceOutcome(device, result, attempt)
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
                return DeviceOutcome(device, result, attempt)
            if result.status not in RETRY_STATUSES:
                log.warning("APNs refused a push for tenant %s: %s", tenant, result.reason)
                return DeviceOutcome(device, result, attempt)
            delay = self._backoff(attempt)
            if time.time() + delay >= deadline - 0.05:
                return DeviceOutcome(device, result, attempt)
            if await self.calls.state(tenant, call_id) != "ringing":
                return DeviceOutcome(device, result, attempt)
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        cap = min(self.settings.apns_retry_max_s, self.settings.apns_retry_base_s * 2**attempt)
        return self._random.uniform(cap / 2, cap)
