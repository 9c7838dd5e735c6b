"""A browser that offers its camera: the call is audio only and the gateway stays flat.

Headless Chromium (``tests/conftest.chromium``) with its fake camera and microphone
calls a gateway process the way a careless page would: ``getUserMedia({audio: true, video:
true})`` and every track on the peer connection. The gateway used to decode every video
frame into a queue nobody read (~9 MB/s); now it answers the video section ``inactive``.
For a minute its resident memory must stay within 20 MB, while the echo agent hears the
microphone and the page hears the echo (issue 14, finding 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from aiortc.sdp import SessionDescription
from nats.aio.client import Client as NatsClient

from voicemesh.testkit.fixtures import ProcessTracker, wait_until
from voicemesh.testkit.gateway import echo_gateway, memory_growth_mb

from ..conftest import chromium

pytestmark = pytest.mark.slow

TENANT = "demo-salon"
CALL_TOKEN_SECRET = "browser-test-call-token-secret-0123456789"
RSS_BUDGET_MB = 20.0
WINDOW_S = 60.0

# The page's own call: a demo call (no key), camera and microphone, WHIP offer, answer.
CALL_WITH_CAMERA = """async (tenant) => {
  const created = await (await fetch(`/v1/${tenant}/calls`, { method: "POST" })).json();
  const media = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  const pc = new RTCPeerConnection();
  media.getTracks().forEach((t) => pc.addTrack(t, media));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") done();
    });
  });
  const response = await fetch(created.whip_url, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${created.token}` },
    body: pc.localDescription.sdp,
  });
  const answer = await response.text();
  if (response.status === 201) await pc.setRemoteDescription({ type: "answer", sdp: answer });
  window.vmTest = { pc, media };
  return { status: response.status, answer, offer: pc.localDescription.sdp,
           callId: created.call_id };
}"""

RTP_STATS = """async () => {
  const out = { videoSent: 0, audioSent: 0, audioReceived: 0 };
  (await window.vmTest.pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") out.videoSent += s.packetsSent;
    if (s.type === "outbound-rtp" && s.kind === "audio") out.audioSent += s.packetsSent;
    if (s.type === "inbound-rtp" && s.kind === "audio") out.audioReceived += s.packetsReceived;
  });
  return out;
}"""


@pytest.mark.timeout(180)
async def test_a_browser_offering_its_camera_talks_audio_only_and_memory_stays_flat(
    nats: NatsClient, nats_url: str, redis_url: str, processes: ProcessTracker
) -> None:
    async with (
        echo_gateway(
            nats, nats_url, redis_url, processes, TENANT, call_token_secret=CALL_TOKEN_SECRET
        ) as stack,
        chromium("--use-fake-device-for-media-stream") as browser,
    ):
        context = await browser.new_context(permissions=["microphone", "camera"])
        page = await context.new_page()
        await page.goto(f"{stack.url}/demo")  # the gateway's origin, for fetch and WHIP
        call: dict[str, Any] = await page.evaluate(CALL_WITH_CAMERA, TENANT)
        assert call["status"] == 201, call["answer"]
        offered = [m.kind for m in SessionDescription.parse(call["offer"]).media]
        assert offered == ["audio", "video"]  # the browser did offer its camera
        await page.wait_for_function(
            "window.vmTest.pc.connectionState === 'connected'", timeout=20_000
        )
        call_id = call["callId"]

        def loud_frames() -> int:
            frames = stack.agent.frames.get(call_id, [])
            return sum(np.abs(np.frombuffer(f.pcm, "<i2")).max() > 1000 for f in frames)

        await wait_until(lambda: loud_frames() >= 10, 15, what="the microphone on audio.in")
        peak = await memory_growth_mb(stack.process, WINDOW_S, RSS_BUDGET_MB)
        stats = await page.evaluate(RTP_STATS)
        assert await page.evaluate("window.vmTest.pc.connectionState") == "connected"
    # Audio both ways for the whole minute; the camera was declined and never sent a packet.
    answered = SessionDescription.parse(call["answer"]).media
    assert [(m.kind, m.direction) for m in answered] == [
        ("audio", "sendrecv"),
        ("video", "inactive"),
    ]
    assert stats["videoSent"] == 0, stats
    assert stats["audioSent"] > 40 * WINDOW_S and stats["audioReceived"] > 40 * WINDOW_S, stats
    assert len(stack.agent.frames[call_id]) > 45 * WINDOW_S
    print(f"\ncamera offered: the gateway grew at most {peak:.1f} MB in {WINDOW_S:.0f} s")
