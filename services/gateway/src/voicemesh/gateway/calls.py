"""Calls on this gateway worker: one aiortc peer connection each, wired to NATS.

``CallManager`` owns every ``CallSession`` of the process. A session lives from the first
SDP offer to ``CallEnded``; its peer connection may be replaced by a reconnect (a new
offer for the same call within ``reconnect_grace_s``: aiortc cannot ICE-restart), and the
agent's conversation goes on because the NATS side of the call is kept.

Lifecycle events are published once per call (``CallAnswered`` for pushed calls,
``CallConnected`` on the first ICE connection, with the phone the tenant backend vouched
for, if any; ``CallEnded`` with its reason); the NATS
side of a call (audio, control, transcripts, those events) is ``callbus.CallBus``.

    state:  connecting ──ICE──► live ──PC lost──► grace ──new offer──► connecting
                │                 │                 │
                └─ timeout        └─ hangup, agent_hangup, max_duration, server_shutdown
                                                    └─ ice_failed / timeout (grace over)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription
from opentelemetry import context as otel_context

from voicemesh.common import CallAnswered, CallConnected, CallEnded, EndReason
from voicemesh.common.runtime.delivery import Delivery
from voicemesh.common.runtime.publisher import JetStreamPublisher
from voicemesh.gateway import advertise
from voicemesh.gateway._tasks import cancel_and_wait
from voicemesh.gateway.callbus import CallBus
from voicemesh.gateway.media import AgentAudioTrack, CallerAudio, Playout
from voicemesh.gateway.sdp import OfferRejected, screen_offer

__all__ = ["CallManager", "CallSession", "OfferRejected"]

log = logging.getLogger(__name__)

SUPERVISE_EVERY_S = 0.25
#: On shutdown, how long the calls' last lifecycle events may take to reach JetStream
#: (within the default ``graceful_timeout`` of 10 s).
DRAIN_TIMEOUT_S = 8.0
ENDED_MEMORY = 4096
_CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(eq=False)
class CallSession:
    tenant: str
    call_id: str
    vertical: str | None
    origin: str
    playout: Playout
    #: The E.164 number the tenant backend vouched for, sent on ``CallConnected``.
    phone: str | None = None
    state: str = "connecting"
    session_id: str = ""
    pc: RTCPeerConnection | None = None
    caller: CallerAudio | None = None
    agent_track: AgentAudioTrack | None = None
    channel: Any = None
    offered_at: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    detached_at: float | None = None
    detach_reason: EndReason = EndReason.ICE_FAILED
    ever_connected: bool = False
    end_reason: EndReason | None = None
    seq: int = 0
    subscriptions: list[Subscription] = field(default_factory=list)
    #: The trace context of the first offer: every lifecycle event of the call is its child.
    trace: otel_context.Context | None = None

    def tell_page(self, message: dict[str, Any]) -> None:
        """Send a JSON message on the /demo page's data channel, if it opened one."""
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            with contextlib.suppress(Exception):
                channel.send(json.dumps(message))


class CallManager:
    """Every call of this worker, their timers, and admission."""

    def __init__(
        self,
        *,
        nats: Callable[[], NatsClient],
        events: JetStreamPublisher,
        delivery: Delivery,
        max_calls: int,
        reconnect_grace_s: float,
        connect_timeout_s: float,
        media_timeout_s: float,
        max_duration_s: float,
        playout_prefill_ms: int,
        playout_max_ms: int,
        stun_urls: list[str],
        media_bind_ip: str = "",
        media_advertise_ip: str = "",
        on_count: Callable[[int], None] = lambda n: None,
        on_ended: Callable[[str], Awaitable[None]] | None = None,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        self._on_ended = on_ended
        self._drain_timeout_s = drain_timeout_s
        self.bus = CallBus(
            nats=nats, events=events, delivery=delivery, on_hangup=self._agent_hangup
        )
        self.max_calls = max_calls
        self.reconnect_grace_s = reconnect_grace_s
        self.connect_timeout_s = connect_timeout_s
        self.media_timeout_s = media_timeout_s
        self.max_duration_s = max_duration_s
        self._prefill_ms = playout_prefill_ms
        self._max_ms = playout_max_ms
        self._stun = stun_urls
        self._bind_ip = media_bind_ip
        self._advertise_ip = media_advertise_ip
        self._on_count = on_count
        self.calls: dict[str, CallSession] = {}
        self._by_session: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Recently ended calls, so a late offer cannot revive one (bounded: Redis keeps
        # the long-term record).
        self.ended: OrderedDict[str, EndReason] = OrderedDict()

    # -- admission ---------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self.calls)

    def has_room(self) -> bool:
        return not self._closing and self.active < self.max_calls

    def call_for_session(self, session_id: str) -> CallSession | None:
        call_id = self._by_session.get(session_id)
        return self.calls.get(call_id) if call_id else None

    # -- offers ------------------------------------------------------------------------------

    async def connect(
        self,
        tenant: str,
        call_id: str,
        sdp: str,
        *,
        origin: str,
        vertical: str | None,
        phone: str | None = None,
    ) -> tuple[CallSession, str]:
        """A first offer for a call: a new session. Returns it and the SDP answer."""
        if not _CALL_ID.fullmatch(call_id):
            raise OfferRejected("invalid call id")
        if call_id in self.calls or call_id in self.ended:
            raise OfferRejected("this call already has a session; reconnect on its Location")
        sdp = screen_offer(sdp)
        call = CallSession(
            tenant=tenant,
            call_id=call_id,
            vertical=vertical,
            origin=origin,
            phone=phone,
            playout=Playout(prefill_ms=self._prefill_ms, max_ms=self._max_ms),
            trace=otel_context.get_current(),
        )
        self.calls[call_id] = call
        self._on_count(self.active)
        try:
            await self.bus.subscribe(call)
            answer = await self._attach(call, sdp)
        except BaseException:
            await self._discard(call)
            raise
        if origin == "push":
            await self.bus.lifecycle(call, CallAnswered)
        return call, answer

    async def reconnect(self, call: CallSession, sdp: str) -> str:
        """A new offer for a live call (network change): replace its peer connection.

        The old session URL stays valid until the new offer is answered, so a client whose
        new offer is refused can try again on it.
        """
        sdp = screen_offer(sdp)
        if call.end_reason is not None:
            raise OfferRejected("the call has ended")
        old_session, old_pc, old_caller = call.session_id, call.pc, call.caller
        call.pc = call.caller = call.agent_track = call.channel = None
        await self._close_media(old_pc, old_caller, call)
        call.state = "connecting"
        call.offered_at = time.monotonic()
        try:
            answer = await self._attach(call, sdp)
        except BaseException:
            # A bad new offer must not end the call: back to waiting for a good one.
            new_pc = call.pc
            self._by_session.pop(call.session_id, None)
            call.session_id = old_session
            call.pc = call.caller = call.agent_track = call.channel = None
            await self._close_media(new_pc, None, call)
            call.state = "grace"
            call.detached_at = time.monotonic()
            raise
        self._by_session.pop(old_session, None)
        return answer

    async def _attach(self, call: CallSession, sdp: str) -> str:
        config = RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in self._stun[:1]])
        pc = RTCPeerConnection(config)
        call.pc = pc
        call.session_id = secrets.token_urlsafe(18)
        self._by_session[call.session_id] = call.call_id
        track_out = AgentAudioTrack(call.playout)
        call.agent_track = track_out

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind != "audio" or call.pc is not pc:
                return
            caller = CallerAudio(track, self.bus.audio_in_publisher(call), seq_start=call.seq)
            call.caller = caller
            caller.start()

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if call.pc is pc:
                call.channel = channel

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if call.pc is not pc:
                return
            state = pc.connectionState
            if state == "connected":
                await self._connected(call)
            elif state in {"failed", "closed"}:
                self._detach(call, EndReason.ICE_FAILED)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            pc.addTrack(track_out)
            answer = await pc.createAnswer()
            with advertise.gathering_on(self._bind_ip):
                await pc.setLocalDescription(answer)
        except OfferRejected:
            raise
        except Exception as exc:
            raise OfferRejected(f"cannot negotiate: {type(exc).__name__}: {exc}"[:300]) from exc
        local = pc.localDescription
        if not re.search(r"^m=audio [1-9]", local.sdp, re.MULTILINE):
            raise OfferRejected("no audio codec in common (Opus, G.722, PCMU or PCMA)")
        return advertise.advertise(str(local.sdp), self._bind_ip, self._advertise_ip)

    async def _agent_hangup(self, call: CallSession) -> None:
        await self.end(call, EndReason.AGENT_HANGUP)

    # -- state -------------------------------------------------------------------------------

    async def _connected(self, call: CallSession) -> None:
        call.state = "live"
        call.detached_at = None
        if call.ever_connected:
            log.info("call reconnected")
            return
        call.ever_connected = True
        call.connected_at = time.monotonic()
        direction = "outbound" if call.origin == "push" else "inbound"
        await self.bus.lifecycle(
            call, CallConnected, direction=direction, vertical=call.vertical, phone=call.phone
        )
        call.tell_page({"type": "connected", "call_id": call.call_id})

    def _detach(self, call: CallSession, reason: EndReason) -> None:
        """The peer connection is gone; wait ``reconnect_grace_s`` for a new offer."""
        if call.end_reason is not None or call.state == "grace":
            return
        call.state = "grace"
        call.detached_at = time.monotonic()
        call.detach_reason = reason
        call.playout.clear()

    async def end(self, call: CallSession, reason: EndReason) -> None:
        """End the call once: close media, unsubscribe, publish ``CallEnded``."""
        if call.end_reason is not None:
            return
        call.end_reason = reason
        call.state = "ended"
        call.tell_page({"type": "ended", "reason": reason.value})
        duration = time.monotonic() - call.connected_at if call.connected_at else 0.0
        try:
            await self._discard(call)
        finally:
            self.ended[call.call_id] = reason
            while len(self.ended) > ENDED_MEMORY:
                self.ended.popitem(last=False)
            if self._on_ended is not None:
                await self._on_ended(call.call_id)
            await self.bus.lifecycle(call, CallEnded, reason=reason, duration_s=round(duration, 3))
            log.info("call ended: %s after %.1fs", reason.value, duration)

    async def end_lost(self, tenant: str, call_id: str, *, origin: str) -> None:
        """Publish ``CallEnded`` (``error``) for a call another worker held when it died."""
        if call_id in self.calls:
            return
        call = CallSession(
            tenant=tenant, call_id=call_id, vertical=None, origin=origin, playout=Playout()
        )
        self.ended[call_id] = EndReason.ERROR
        await self.bus.lifecycle(call, CallEnded, reason=EndReason.ERROR, duration_s=0.0)
        log.info("call ended: %s (its worker was lost)", EndReason.ERROR.value)

    async def _discard(self, call: CallSession) -> None:
        self.calls.pop(call.call_id, None)
        self._by_session.pop(call.session_id, None)
        self._on_count(self.active)
        pc, caller = call.pc, call.caller
        call.pc = call.caller = call.agent_track = None
        for sub in call.subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        call.subscriptions = []
        await self._close_media(pc, caller, call)

    async def _close_media(
        self, pc: RTCPeerConnection | None, caller: CallerAudio | None, call: CallSession
    ) -> None:
        if caller is not None:
            await caller.stop()
        if pc is not None:
            try:
                await pc.close()
            except Exception as exc:
                log.warning("closing a peer connection failed: %s", type(exc).__name__)

    # -- timers ------------------------------------------------------------------------------

    async def supervise_once(self) -> None:
        now = time.monotonic()
        for call in list(self.calls.values()):
            reason: EndReason | None = None
            if call.connected_at is not None and now - call.connected_at > self.max_duration_s:
                reason = EndReason.MAX_DURATION
            elif call.state == "grace" and call.detached_at is not None:
                if now - call.detached_at > self.reconnect_grace_s:
                    reason = call.detach_reason
            elif call.state == "connecting" and now - call.offered_at > self.connect_timeout_s:
                reason = EndReason.TIMEOUT if not call.ever_connected else call.detach_reason
            elif call.state == "live":
                last = call.caller.last_frame_at if call.caller else None
                since = now - (last or call.offered_at)
                if since > self.media_timeout_s:
                    # No RTP for a while: the path is dead long before ICE consent fails.
                    self._detach(call, EndReason.TIMEOUT)
            if reason is not None:
                await self.end(call, reason)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_EVERY_S)
            try:
                await self.supervise_once()
            except Exception:
                log.exception("call supervision failed")

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="calls")

    async def shutdown(self) -> None:
        """End every call with ``server_shutdown`` (SIGTERM), stop the timers, and give the
        lifecycle events still queued ``drain_timeout_s`` to reach JetStream."""
        self._closing = True
        await cancel_and_wait(self._task)
        self._task = None
        await asyncio.gather(
            *(self.end(call, EndReason.SERVER_SHUTDOWN) for call in list(self.calls.values()))
        )
        await self.bus.drain(self._drain_timeout_s)
