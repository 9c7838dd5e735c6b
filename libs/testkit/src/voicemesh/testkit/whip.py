"""The one WHIP client, and the echo agent at the other end of the gateway.

``WhipCaller`` dials the gateway as a phone or a browser does: create a call (``POST
/v1/{tenant}/calls``), POST an SDP offer with the call token (following a worker's 307),
reconnect with a new offer on the session URL, hang up with ``DELETE``. It sends any audio
track (``tracks``) and records what it hears (``Heard``). The simulated phone, ``voicemesh
call``, the tests and the benches all call through it.

``EchoAgent`` plays the agent on NATS: it keeps the caller's ``audio.in`` frames and sends
each one straight back on ``audio.out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame as AvFrame
from av import AudioResampler
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voicemesh.common import decode_frame
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.audio import AudioFrame
from voicemesh.testkit.tracks import RATE, PacedTrack, ToneTrack, rms

__all__ = ["LOUD_RMS", "CallRefused", "EchoAgent", "Heard", "WhipCaller"]

SDP = "application/sdp"
#: A received 20 ms frame louder than this (RMS of s16 samples) counts in ``Heard.loud_at``.
LOUD_RMS = 1000.0


class CallRefused(RuntimeError):
    """The gateway did not answer the offer with ``201``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"the gateway refused the offer: HTTP {status} {detail[:200]}")
        self.status = status


@dataclass
class Heard:
    """What a caller received, as 48 kHz mono s16: levels, the last seconds, when it was loud."""

    loud_rms: float = LOUD_RMS
    #: Keep every frame's PCM in ``recording`` (a test recognising what the agent said).
    record: bool = False
    frames: int = 0
    #: (monotonic time, RMS) of every frame.
    levels: list[tuple[float, float]] = field(default_factory=list)
    pcm: deque[bytes] = field(default_factory=lambda: deque(maxlen=250))
    loud_at: list[float] = field(default_factory=list)
    #: Seconds between frames arriving from the track.
    gaps: list[float] = field(default_factory=list)
    #: With ``record``: (monotonic time, PCM) of every frame.
    recording: list[tuple[float, bytes]] = field(default_factory=list)

    def add(self, at: float, pcm: bytes) -> None:
        level = rms(pcm)
        self.frames += 1
        self.levels.append((at, level))
        self.pcm.append(pcm)
        if level > self.loud_rms:
            self.loud_at.append(at)
        if self.record:
            self.recording.append((at, pcm))

    def recent(self, frames: int = 50) -> bytes:
        return b"".join(list(self.pcm)[-frames:])


class WhipCaller:
    """One call into the gateway over WHIP, with aiortc (see the module docstring).

    ``track`` is what the caller says (default: a 440 Hz tone). ``up`` is set once the
    peer connection has connected, ``down`` once it has failed or closed (both cleared by
    a new offer).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        track: MediaStreamTrack | None = None,
        datachannel: bool = False,
        record: bool = False,
        loud_rms: float = LOUD_RMS,
    ) -> None:
        self.http = http
        self.track: MediaStreamTrack = track if track is not None else ToneTrack()
        self.heard = Heard(loud_rms=loud_rms, record=record)
        self.messages: list[str] = []
        self.pc: RTCPeerConnection | None = None
        self.whip_url = ""
        self.token: str | None = None
        self.location: str | None = None
        #: The ``Link: <turn:…>; rel="ice-server"`` headers of the last answer.
        self.ice_servers: list[str] = []
        self.up = asyncio.Event()
        self.down = asyncio.Event()
        self._datachannel = datachannel
        self._listeners: list[asyncio.Task[None]] = []

    async def create(self, tenant: str, api_key: str | None = None) -> dict[str, Any]:
        """``POST /v1/{tenant}/calls`` (a demo tenant needs no key): call id, token, WHIP URL."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        response = await self.http.post(f"/v1/{tenant}/calls", headers=headers)
        response.raise_for_status()
        created: dict[str, Any] = response.json()
        return created

    async def connect(
        self, whip_url: str, token: str, *, traceparent: str | None = None
    ) -> httpx.Response:
        """POST the offer; on 201 apply the answer. Follows a worker's 307 like a browser.

        A ``traceparent`` (a push's) makes the gateway's side of the call join its trace.
        """
        self.whip_url, self.token = whip_url, token
        sdp = await self._offer()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": SDP}
        if traceparent:
            headers["traceparent"] = traceparent
        response = await self.http.post(whip_url, content=sdp, headers=headers)
        if response.status_code == 307:
            response = await self.http.post(
                response.headers["location"], content=sdp, headers=headers
            )
        await self._answered(response)
        return response

    async def dial(
        self,
        whip_url: str,
        token: str,
        *,
        traceparent: str | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """``connect``, then wait until ICE connects.

        Raises ``CallRefused`` when the gateway does not answer ``201`` and ``TimeoutError``
        when the connection does not come up; the caller is closed in both cases.
        """
        try:
            response = await self.connect(whip_url, token, traceparent=traceparent)
            if response.status_code != 201:
                raise CallRefused(response.status_code, response.text)
            await asyncio.wait_for(self.up.wait(), connect_timeout_s)
        except BaseException:
            await self.close()
            raise

    async def reconnect(self) -> httpx.Response:
        """A new peer connection for the same call (what a phone does on Wi-Fi → cellular)."""
        if self.location is None:
            raise RuntimeError("the call has no session to reconnect to")
        sdp = await self._offer()
        response = await self.http.post(self.location, content=sdp, headers={"Content-Type": SDP})
        await self._answered(response)
        return response

    async def connected(self) -> bool:
        return self.pc is not None and self.pc.connectionState == "connected"

    async def hangup(self) -> httpx.Response:
        """``DELETE`` the session: the gateway ends the call with ``hangup``."""
        if self.location is None:
            raise RuntimeError("the call has no session to hang up")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return await self.http.delete(self.location, headers=headers)

    async def close(self) -> None:
        """Stop listening, close the peer connection and the track; idempotent."""
        await self._close_pc()
        self.track.stop()

    async def _offer(self) -> str:
        await self._close_pc()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc = pc
        self.up.clear()
        self.down.clear()
        if self.track.readyState != "live" and isinstance(self.track, PacedTrack):
            self.track = self.track.renewed()
        pc.addTransceiver(self.track, direction="sendrecv")
        if self._datachannel:
            channel = pc.createDataChannel("events")
            channel.on("message", self.messages.append)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._listeners.append(asyncio.ensure_future(self._receive(track)))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc:
                return
            if pc.connectionState == "connected":
                self.up.set()
            elif pc.connectionState in {"failed", "closed"}:
                self.down.set()

        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def _answered(self, response: httpx.Response) -> None:
        if response.status_code == 201 and self.pc is not None:
            self.location = str(response.url.join(response.headers["location"]))
            self.ice_servers = response.headers.get_list("link")
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=response.text, type="answer")
            )

    async def _receive(self, track: MediaStreamTrack) -> None:
        resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
        last: float | None = None
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, AvFrame):
                    continue
                now = time.monotonic()
                if last is not None:
                    self.heard.gaps.append(now - last)
                last = now
                for out in resampler.resample(frame):
                    self.heard.add(now, bytes(out.planes[0])[: out.samples * 2])

    async def _close_pc(self) -> None:
        listeners, self._listeners = self._listeners, []
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        pc, self.pc = self.pc, None
        if pc is not None:
            await pc.close()


class EchoAgent:
    """The agent's role on NATS: keeps ``audio.in`` frames and echoes them on ``audio.out``."""

    def __init__(self, nc: NatsClient, tenant: str, *, echo: bool = True) -> None:
        self.nc = nc
        self.tenant = tenant
        self.echo = echo
        self.frames: dict[str, list[AudioFrame]] = {}
        self.hop_ms: list[float] = []
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.audio_in(self.tenant, "*"), cb=self._on)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on(self, msg: Msg) -> None:
        frame = decode_frame(msg.data)
        self.hop_ms.append((time.time_ns() // 1000 - frame.capture_us) / 1000)
        parsed = subjects.parse_call_subject(msg.subject)
        if parsed is None:
            return
        _, call_id, _ = parsed
        self.frames.setdefault(call_id, []).append(frame)
        if self.echo:
            await self.nc.publish(subjects.audio_out(self.tenant, call_id), msg.data)

    def pcm(self, call_id: str, last: int = 50) -> bytes:
        return b"".join(f.pcm for f in self.frames.get(call_id, [])[-last:])
