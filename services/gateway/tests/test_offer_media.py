"""Offers with more media than one voice: only the first audio section is ever received.

A browser that offers its camera, or a peer with two audio sections, still gets a call,
audio only: the gateway answers the extra sections ``inactive`` so no video frame or second
audio stream is ever decoded (issue 14, finding 1; the 60 s memory runs are the slow test
below and ``tests/browser/test_offer_video.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc.mediastreams import VideoStreamTrack
from aiortc.sdp import SessionDescription
from nats.aio.client import Client as NatsClient

from voicemesh.common.contracts import streams
from voicemesh.gateway.sdp import MAX_MEDIA_SECTIONS
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import ProcessTracker, wait_until
from voicemesh.testkit.tracks import ToneTrack, dominant_frequency
from voicemesh.testkit.whip import EchoAgent, WhipCaller

from .conftest import API_KEY, SECRET, TENANT, GatewayHarness

#: How much the gateway process may grow over ``WINDOW_S`` of a call (issue 14).
RSS_BUDGET_MB = 20.0
WINDOW_S = 60.0


class ExtraMediaCaller(WhipCaller):
    """A caller whose offer carries one more section after its voice (camera or 2nd mic)."""

    def __init__(self, *args: Any, extra: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra = extra

    async def _offer(self) -> str:
        await super()._offer()
        assert self.pc is not None
        self.pc.addTransceiver(self.extra, direction="sendrecv")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)


def _directions(sdp: str) -> list[tuple[str, str]]:
    return [(m.kind, m.direction or "") for m in SessionDescription.parse(sdp).media]


async def _dial(h: GatewayHarness, caller: WhipCaller) -> tuple[str, str]:
    created = await caller.create(TENANT, API_KEY)
    response = await caller.connect(created["whip_url"], created["token"])
    assert response.status_code == 201, response.text
    await wait_until(caller.connected, 15, what="ICE connected")
    return created["call_id"], response.text


async def test_a_camera_is_answered_inactive_and_the_call_is_audio_only(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    caller = ExtraMediaCaller(h.http, extra=VideoStreamTrack())
    try:
        call_id, answer = await _dial(h, caller)
        assert _directions(answer) == [("audio", "sendrecv"), ("video", "inactive")]
        pc = h.gw.calls.calls[call_id].pc
        assert pc is not None
        # Nothing receives the camera: no remote video track exists to queue frames into.
        assert [t.kind for t in pc.getTransceivers() if t.receiver.track is not None] == ["audio"]
        await wait_until(lambda: len(h.agent.frames.get(call_id, [])) >= 50, 10, what="audio.in")
        assert abs(dominant_frequency(h.agent.pcm(call_id, 50), 16000) - 440) < 10
        await wait_until(lambda: len(caller.heard.loud_at) >= 10, 10, what="the echo")
    finally:
        await caller.hangup()
        await caller.close()


async def test_a_second_audio_section_is_never_received(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    caller = ExtraMediaCaller(h.http, extra=ToneTrack(880.0))
    try:
        call_id, answer = await _dial(h, caller)
        assert _directions(answer) == [("audio", "sendrecv"), ("audio", "inactive")]
        await wait_until(lambda: len(h.agent.frames.get(call_id, [])) >= 100, 10, what="audio.in")
        frames = h.agent.frames[call_id]
        # One caller-audio task: one run of sequence numbers, every frame the first mic's.
        seqs = [f.seq for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        pitches = [dominant_frequency(f.pcm, 16000) for f in frames[5:]]  # 50 Hz bins
        assert all(abs(p - 440) < 60 for p in pitches), sorted(set(pitches))
    finally:
        await caller.hangup()
        await caller.close()


async def test_an_offer_with_too_many_sections_is_refused_with_the_reason(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    caller = WhipCaller(h.http)
    try:
        created = await caller.create(TENANT, API_KEY)
        offer = await caller._offer()
        head, audio = offer.split("m=audio", 1)
        crowded = head + ("m=audio" + audio) * (MAX_MEDIA_SECTIONS + 1)
        r = await h.http.post(
            created["whip_url"],
            content=crowded,
            headers={
                "Content-Type": "application/sdp",
                "Authorization": f"Bearer {created['token']}",
            },
        )
    finally:
        await caller.close()
    assert r.status_code == 400 and "media sections" in r.json()["detail"], r.text


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (``VmRSS``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for process {pid}")


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_two_mic_peer_for_a_minute_leaves_the_gateway_memory_flat(
    nats: NatsClient, nats_url: str, redis_url: str, processes: ProcessTracker
) -> None:
    await streams.apply(nats.jetstream())
    agent = EchoAgent(nats, TENANT)
    await agent.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gateway = processes.python_module(
        "voicemesh.gateway",
        {
            "VOICEMESH_NATS_URL": nats_url,
            "VOICEMESH_REDIS_URL": redis_url,
            "VOICEMESH_CALL_TOKEN_SECRET": SECRET,
            "VOICEMESH_API_KEYS": f"{TENANT}:{API_KEY}",
            "VOICEMESH_WORKER_URL": base,
        },
        http_port=port,
    )
    await gateway.wait_healthy()
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        caller = ExtraMediaCaller(http, extra=ToneTrack(880.0))
        try:
            created = await caller.create(TENANT, API_KEY)
            await caller.dial(created["whip_url"], created["token"])
            call_id = created["call_id"]
            await wait_until(lambda: len(caller.heard.loud_at) >= 25, 15, what="the echo")
            start, peak = rss_mb(gateway.pid), 0.0
            until = time.monotonic() + WINDOW_S
            while time.monotonic() < until:
                peak = max(peak, rss_mb(gateway.pid) - start)
                assert peak < RSS_BUDGET_MB, f"the gateway grew {peak:.0f} MB"
                await asyncio.sleep(1.0)
            assert await caller.connected()
            heard = len(caller.heard.loud_at)
            frames = agent.frames[call_id]
            seqs = [f.seq for f in frames]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one caller-audio task
            assert len(frames) > 45 * WINDOW_S  # and the call was audio all along
        finally:
            await caller.close()
            await agent.stop()
    assert heard > 40 * WINDOW_S
    print(f"\ntwo-mic peer: the gateway grew at most {peak:.1f} MB in {WINDOW_S:.0f} s")
