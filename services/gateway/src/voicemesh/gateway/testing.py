"""Real protocol peers for the gateway's tests and benchmarks (not used in production).

* ``WhipCaller``: an aiortc client that dials the gateway as a phone or browser would
  (create call, WHIP offer, reconnect, DELETE) and records what it hears;
* ``EchoAgent``: plays the agent on NATS with raw nats-py: it records ``audio.in`` and
  sends every frame straight back on ``audio.out``;
* ``ToneTrack`` / ``dominant_frequency``: a paced sine source and its measurement.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
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
from voicemesh.gateway._tasks import cancel_and_wait

__all__ = ["EchoAgent", "ToneTrack", "WhipCaller", "dominant_frequency", "rms"]

RATE = 48000
SAMPLES = 960


def dominant_frequency(pcm: bytes, rate: int) -> float:
    """The strongest frequency in s16 mono ``pcm`` (Hann window, FFT peak)."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    if samples.size < 64:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum)) * rate / samples.size


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


class ToneTrack(MediaStreamTrack):
    """A real-time sine at 48 kHz; ``burst_s``/``gap_s`` make it beep (latency probes)."""

    kind = "audio"

    def __init__(
        self,
        frequency: float = 440.0,
        *,
        amplitude: float = 0.3,
        burst_s: float = 0.0,
        gap_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self.burst_s, self.gap_s = burst_s, gap_s
        self._pts = 0
        self._start: float | None = None
        self.onsets: list[float] = []  # monotonic times a burst began (as sent)

    async def recv(self) -> AvFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += SAMPLES
            due = self._start + self._pts / RATE
            if due > now:
                await asyncio.sleep(due - now)
        t = (self._pts + np.arange(SAMPLES)) / RATE
        wave = self.amplitude * np.sin(2 * math.pi * self.frequency * t)
        if self.burst_s > 0:
            period = self.burst_s + self.gap_s
            phase = self._pts / RATE % period
            if phase >= self.burst_s:
                wave[:] = 0
            elif phase < SAMPLES / RATE:
                self.onsets.append(time.monotonic())
        frame = AvFrame.from_ndarray(
            (wave * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


@dataclass
class Heard:
    """What a caller received: 48 kHz mono PCM of the last seconds, and when it was loud."""

    pcm: deque[bytes] = field(default_factory=lambda: deque(maxlen=250))
    frames: int = 0
    loud_at: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)

    def recent(self, frames: int = 50) -> bytes:
        return b"".join(list(self.pcm)[-frames:])


class WhipCaller:
    """One aiortc call into the gateway, driven over real HTTP signaling."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        frequency: float = 440.0,
        burst_s: float = 0.0,
        gap_s: float = 0.0,
        datachannel: bool = False,
    ) -> None:
        self.http = http
        self._tone_args = (frequency, burst_s, gap_s)
        self.tone = ToneTrack(frequency, burst_s=burst_s, gap_s=gap_s)
        self.heard = Heard()
        self.location: str | None = None
        self.pc: RTCPeerConnection | None = None
        self.messages: list[str] = []
        self._datachannel = datachannel
        self._rx: asyncio.Task[None] | None = None
        self._loud_threshold = 1000.0

    async def create(self, tenant: str, api_key: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        response = await self.http.post(f"/v1/{tenant}/calls", headers=headers)
        response.raise_for_status()
        created: dict[str, Any] = response.json()
        return created

    async def _offer(self) -> str:
        await self._close_pc()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc = pc
        if self.tone.readyState != "live":  # closing a peer connection ends its tracks
            frequency, burst_s, gap_s = self._tone_args
            self.tone = ToneTrack(frequency, burst_s=burst_s, gap_s=gap_s)
        pc.addTransceiver(self.tone, direction="sendrecv")
        if self._datachannel:
            channel = pc.createDataChannel("events")
            channel.on("message", self.messages.append)

        @pc.on("track")
        def on_track(track: Any) -> None:
            self._rx = asyncio.get_running_loop().create_task(self._receive(track))

        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def connect(self, whip_url: str, token: str) -> httpx.Response:
        """POST the offer; on 201 apply the answer. Follows a worker's 307 like a browser."""
        sdp = await self._offer()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
        response = await self.http.post(whip_url, content=sdp, headers=headers)
        if response.status_code == 307:
            response = await self.http.post(
                response.headers["location"], content=sdp, headers=headers
            )
        await self._answered(response)
        return response

    async def reconnect(self) -> httpx.Response:
        """A new peer connection for the same call (what a phone does on Wi-Fi → cellular)."""
        assert self.location is not None
        sdp = await self._offer()
        response = await self.http.post(
            self.location, content=sdp, headers={"Content-Type": "application/sdp"}
        )
        await self._answered(response)
        return response

    async def _answered(self, response: httpx.Response) -> None:
        if response.status_code == 201 and self.pc is not None:
            self.location = response.headers["location"]
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=response.text, type="answer")
            )

    async def connected(self) -> bool:
        return self.pc is not None and self.pc.connectionState == "connected"

    async def hangup(self) -> httpx.Response:
        assert self.location is not None
        return await self.http.delete(self.location)

    async def _receive(self, track: Any) -> None:
        resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
        last: float | None = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if last is not None:
                self.heard.gaps.append(now - last)
            last = now
            for out in resampler.resample(frame):
                pcm = bytes(out.to_ndarray().tobytes())
                self.heard.pcm.append(pcm)
                self.heard.frames += 1
                if rms(pcm) > self._loud_threshold:
                    self.heard.loud_at.append(now)

    async def _close_pc(self) -> None:
        await cancel_and_wait(self._rx)
        self._rx = None
        if self.pc is not None:
            await self.pc.close()
            self.pc = None

    async def close(self) -> None:
        await self._close_pc()
        self.tone.stop()


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
