"""Offers with more media than one voice: only the first audio section is ever received.

A browser that offers its camera, or a peer with two audio sections, still gets a call,
audio only: the gateway answers the extra sections ``inactive`` so no video frame or second
audio stream is ever decoded (issue 14, finding 1; the 60 s memory runs are the slow test
below and ``tests/browser/test_offer_video.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiortc.mediastreams import VideoStreamTrack
from aiortc.sdp import SessionDescription
from nats.aio.client import Client as NatsClient

from voicemesh.gateway.sdp import MAX_MEDIA_SECTIONS
from voicemesh.testkit.fixtures import ProcessTracker, wait_until
from voicemesh.testkit.gateway import echo_gateway, memory_growth_mb
from voicemesh.testkit.tracks import ToneTrack, dominant_frequency
from voicemesh.testkit.whip import WhipCaller

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


@contextlib.asynccontextmanager
async def _call(h: GatewayHarness, extra: Any) -> AsyncIterator[tuple[WhipCaller, str, str]]:
    """A connected call whose offer carries ``extra``: (caller, call id, the SDP answer)."""
    caller = ExtraMediaCaller(h.http, extra=extra)
    try:
        created = await caller.create(TENANT, API_KEY)
        response = await caller.connect(created["whip_url"], created["token"])
        assert response.status_code == 201, response.text
        await wait_until(caller.connected, 15, what="ICE connected")
        yield caller, created["call_id"], response.text
    finally:
        await caller.hangup()
        await caller.close()


async def test_a_camera_is_answered_inactive_and_the_call_is_audio_only(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    async with _call(h, VideoStreamTrack()) as (caller, call_id, answer):
        assert _directions(answer) == [("audio", "sendrecv"), ("video", "inactive")]
        pc = h.gw.calls.calls[call_id].pc
        assert pc is not None
        # Nothing receives the camera: no remote video track exists to queue frames into.
        assert [t.kind for t in pc.getTransceivers() if t.receiver.track is not None] == ["audio"]
        await wait_until(lambda: len(h.agent.frames.get(call_id, [])) >= 50, 10, what="audio.in")
        assert abs(dominant_frequency(h.agent.pcm(call_id, 50), 16000) - 440) < 10
        await wait_until(lambda: len(caller.heard.loud_at) >= 10, 10, what="the echo")


async def test_a_second_audio_section_is_never_received(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    async with _call(h, ToneTrack(880.0)) as (_, call_id, answer):
        assert _directions(answer) == [("audio", "sendrecv"), ("audio", "inactive")]
        await wait_until(lambda: len(h.agent.frames.get(call_id, [])) >= 100, 10, what="audio.in")
        frames = h.agent.frames[call_id]
        # One caller-audio task: one run of sequence numbers, every frame the first mic's.
        seqs = [f.seq for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        pitches = [dominant_frequency(f.pcm, 16000) for f in frames[5:]]  # 50 Hz bins
        assert all(abs(p - 440) < 60 for p in pitches), sorted(set(pitches))


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


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_two_mic_peer_for_a_minute_leaves_the_gateway_memory_flat(
    nats: NatsClient, nats_url: str, redis_url: str, processes: ProcessTracker
) -> None:
    keys = f"{TENANT}:{API_KEY}"
    async with (
        echo_gateway(
            nats, nats_url, redis_url, processes, TENANT, call_token_secret=SECRET, api_keys=keys
        ) as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=10) as http,
    ):
        caller = ExtraMediaCaller(http, extra=ToneTrack(880.0))
        try:
            created = await caller.create(TENANT, API_KEY)
            await caller.dial(created["whip_url"], created["token"])
            call_id = created["call_id"]
            await wait_until(lambda: len(caller.heard.loud_at) >= 25, 15, what="the echo")
            peak = await memory_growth_mb(stack.process, WINDOW_S, RSS_BUDGET_MB)
            assert await caller.connected()
            heard = len(caller.heard.loud_at)
            frames = stack.agent.frames[call_id]
            seqs = [f.seq for f in frames]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one caller-audio task
            assert len(frames) > 45 * WINDOW_S  # and the call was audio all along
        finally:
            await caller.close()
    assert heard > 40 * WINDOW_S
    print(f"\ntwo-mic peer: the gateway grew at most {peak:.1f} MB in {WINDOW_S:.0f} s")
