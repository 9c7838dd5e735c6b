"""/demo in real headless Chromium: fake-mic WAV → gateway → audio.in, echo agent → page.

Debian's ``chromium`` is driven by Playwright through ``executable_path`` (no browser
download); the microphone is a WAV of 440 Hz beeps, the agent an echo on NATS.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.common import Speaker, decode_event
from voicemesh.common.contracts import streams, subjects
from voicemesh.testkit.events import transcript_segment
from voicemesh.testkit.fixtures import ProcessTracker, wait_until
from voicemesh.testkit.gateway import start_gateway_process
from voicemesh.testkit.tracks import dominant_frequency
from voicemesh.testkit.whip import EchoAgent

from ..conftest import chromium

pytestmark = pytest.mark.slow

TENANT = "demo-salon"
CALL_TOKEN_SECRET = "browser-test-call-token-secret-0123456789"
OPS_TOKEN = "demo-test-ops-token-0123456789"

PAGE_STATS = """async () => {
  const pc = window.vmDemo.pc;
  if (!pc) return null;
  let out = null;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio")
      out = { packets: s.packetsReceived, energy: s.totalAudioEnergy || 0 };
  });
  return out;
}"""


def _beeps(path: Path, seconds: float = 3.0, rate: int = 48000) -> Path:
    """0.5 s of 440 Hz, then 1 s of silence, repeated: each beep is a latency probe."""
    t = np.arange(int(seconds * rate)) / rate
    on = (t % 1.5) < 0.5
    pcm = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t) * on).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return path


async def test_demo_page_calls_talks_and_hangs_up(
    nats: NatsClient,
    nats_url: str,
    redis_url: str,
    processes: ProcessTracker,
    tmp_path: Path,
) -> None:
    await streams.apply(nats.jetstream())
    lifecycle: list[Any] = []

    async def on_lifecycle(msg: Any) -> None:
        lifecycle.append(decode_event(msg.data))

    await nats.subscribe(subjects.call_lifecycle(TENANT, "*"), cb=on_lifecycle)
    agent = EchoAgent(nats, TENANT)
    await agent.start()
    _, base = await start_gateway_process(
        processes,
        nats_url,
        redis_url,
        call_token_secret=CALL_TOKEN_SECRET,
        env={"VOICEMESH_METRICS_TOKEN": OPS_TOKEN},
    )
    wav = _beeps(tmp_path / "beeps.wav")

    fake_mic = ("--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}")
    try:
        async with chromium(*fake_mic) as browser:
            context = await browser.new_context(permissions=["microphone"])
            page = await context.new_page()
            await page.goto(f"{base}/demo?tenant={TENANT}")
            await page.wait_for_function("document.querySelectorAll('#tenant option').length == 6")
            await page.click("#call")
            await page.wait_for_function(
                "window.vmDemo.state === 'connected' || window.vmDemo.state === 'failed'",
                timeout=20_000,
            )
            state = await page.evaluate("[window.vmDemo.state, window.vmDemo.error]")
            assert state[0] == "connected", state
            call_id = await page.evaluate("window.vmDemo.callId")

            # The WAV's tone reached audio.in as 16 kHz frames.
            def loud_frames() -> list[Any]:
                frames = agent.frames.get(call_id, [])
                return [f for f in frames if np.abs(np.frombuffer(f.pcm, "<i2")).max() > 2000]

            await wait_until(lambda: len(loud_frames()) >= 15, 15, what="the tone on audio.in")
            tone = b"".join(f.pcm for f in loud_frames()[-15:])
            assert abs(dominant_frequency(tone, 16000) - 440) < 15

            # The agent's (echoed) audio reached the page: packets and energy, and a
            # measured round trip from mic onset to agent audio.
            async def page_hears() -> bool:
                stats = await page.evaluate(PAGE_STATS)
                return bool(stats and stats["packets"] > 50 and stats["energy"] > 0.01)

            await wait_until(page_hears, 15, what="agent audio in the page")
            await page.wait_for_function("window.vmDemo.latencies.length >= 1", timeout=15_000)
            latency = await page.evaluate("window.vmDemo.latencyMs")
            assert 0 < latency < 2000
            assert "median" in await page.inner_text("#latency")

            # The live transcript shows both sides.
            for n, (speaker, text) in enumerate(
                [(Speaker.CALLER, "I'd like a haircut"), (Speaker.AGENT, "Sure, when suits you?")]
            ):
                segment = transcript_segment(
                    TENANT, call_id, speaker, n, text, start_s=n, end_s=n + 1
                )
                await nats.publish(
                    subjects.call_transcript(TENANT, call_id), segment.model_dump_json().encode()
                )
            await page.wait_for_function(
                "document.querySelector('#transcript').innerText.includes('when suits you')"
            )
            transcript = await page.inner_text("#transcript")
            assert "You: I'd like a haircut" in transcript and "Agent: Sure" in transcript

            await page.click("#hangup")
            await page.wait_for_function("window.vmDemo.state === 'ended'")
    finally:
        await agent.stop()

    async with httpx.AsyncClient(base_url=base) as http:
        ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
        load = (await http.get("/v1/gateway/load", headers=ops)).json()
    assert load["active"] == 0  # the hang-up ended the call (the load lists no call ids)
    await wait_until(lambda: any(e.type == "call.ended" for e in lifecycle), 5)
    assert [e.type for e in lifecycle if e.call_id == call_id] == ["call.connected", "call.ended"]
    assert [e.reason.value for e in lifecycle if e.type == "call.ended"] == ["hangup"]
    print(f"\n/demo measured round trip (mouth to ear, echo agent): {latency} ms")
