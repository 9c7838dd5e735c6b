"""The same booking from a browser: headless Chromium on the gateway's /demo page, against
the launcher's mesh with the real agent, calendar and transcript services.

Chromium's microphone is a Web Audio stream the test speaks into: each caller line (eSpeak
NG, 48 kHz) is played only once the agent has finished its reply (its last ``audio.out``
frame, watched on NATS), so the conversation does not depend on guessed silences in a WAV
that Chromium would loop. Everything else is the page's own code: its call creation,
WebRTC, WHIP, live transcript and hang-up.
"""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import time as clock
from typing import Any

import httpx
import pytest
from nats.aio.msg import Msg
from playwright.async_api import Page

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import EndReason, Speaker
from voicemesh.phone import synthesize
from voicemesh.phone.script import CallWatcher, Line, converse
from voicemesh.testkit.fixtures import LocalDays, wait_until
from voicemesh.testkit.mesh import nats_client

from ..conftest import chromium
from .conftest import Mesh, appointments_tomorrow_at

pytestmark = pytest.mark.slow

TENANT = "demo-salon"
# Another hour than the phone test's booking, so the two never compete for a slot.
SCRIPT = [
    Line("i would like to book a haircut with maria tomorrow at eleven a m", "your name"),
    Line("my name is mary jones", "number"),
    Line("five five five two three four five six seven eight", "Shall I book it"),
    Line("yes please", "all set"),
]

# getUserMedia answers with a Web Audio stream; window.vmMic.say(base64 s16le, rate) plays
# into it and resolves when the line has been played.
FAKE_MIC = """
(() => {
  let ctx = null, dest = null, until = 0;
  window.vmMic = {
    async say(b64, rate) {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const pcm = new Int16Array(bytes.buffer);
      const buffer = ctx.createBuffer(1, pcm.length, rate);
      const data = buffer.getChannelData(0);
      for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(dest);
      const at = Math.max(ctx.currentTime + 0.05, until);
      until = at + buffer.duration;
      const done = new Promise((resolve) => { source.onended = resolve; });
      source.start(at);
      await done;
    },
  };
  navigator.mediaDevices.getUserMedia = async () => {
    ctx = new AudioContext({ sampleRate: 48000 });
    await ctx.resume();
    dest = ctx.createMediaStreamDestination();
    // A real microphone never goes digitally silent, and with nothing playing Chromium
    // sends no audio at all, so the agent would never hear a turn end: a faint hum
    // (-80 dBFS, far below voice detection) keeps the stream flowing like room noise.
    const hum = ctx.createOscillator();
    const level = ctx.createGain();
    level.gain.value = 0.0001;
    hum.connect(level).connect(dest);
    hum.start();
    return dest.stream;
  };
})();
"""


class PageCaller:
    """The page's end of the call, for ``converse``: speaks into the fake microphone and
    knows the agent has finished when its ``audio.out`` frames stop."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.agent_frames: list[float] = []

    async def on_agent_audio(self, _msg: Msg) -> None:
        self.agent_frames.append(time.monotonic())

    async def say(self, text: str) -> float:
        pcm = await asyncio.to_thread(synthesize, text, 16000)  # Chromium resamples it
        await self.page.evaluate(
            "([b64, rate]) => window.vmMic.say(b64, rate)",
            [base64.b64encode(pcm).decode(), 16000],
        )
        return time.monotonic()

    async def wait_quiet(
        self, quiet_s: float = 0.8, *, since: float = 0.0, timeout: float = 20.0
    ) -> None:
        def quiet() -> bool:
            last = self.agent_frames[-1] if self.agent_frames else 0.0
            # audio.out runs slightly ahead of the ear: allow the gateway's playout too
            return last > since and time.monotonic() - last >= quiet_s + 0.3

        await wait_until(quiet, timeout, what="the agent to finish speaking")


async def test_demo_page_books_with_the_real_agent(mesh: Mesh) -> None:
    gateway = mesh.url("gateway")
    days = LocalDays()
    nc = await nats_client(mesh.nats_url)
    try:
        async with chromium() as browser:
            context = await browser.new_context(permissions=["microphone"])
            await context.add_init_script(FAKE_MIC)
            page = await context.new_page()
            caller = PageCaller(page)
            await page.goto(f"{gateway}/demo?tenant={TENANT}&processing=0")
            await page.wait_for_function("document.querySelectorAll('#tenant option').length")
            await page.select_option("#tenant", TENANT)
            await page.click("#call")
            call_id = await (
                await page.wait_for_function("window.vmDemo.callId", timeout=10_000)
            ).json_value()
            watcher = CallWatcher(nc, TENANT, call_id)
            await watcher.start()
            await nc.subscribe(subjects.audio_out(TENANT, call_id), cb=caller.on_agent_audio)
            try:
                await page.wait_for_function(
                    "['connected', 'failed', 'ended'].includes(window.vmDemo.state)",
                    timeout=20_000,
                )
                state = await page.evaluate("[window.vmDemo.state, window.vmDemo.error]")
                assert state[0] == "connected", state
                said = await converse(caller, watcher, SCRIPT)
                assert said >= len(SCRIPT)  # more when the agent asked again
                # The page shows both sides of the live transcript.
                await page.wait_for_function(
                    "document.querySelector('#transcript').innerText.includes('all set')"
                )
                shown = await page.inner_text("#transcript")
                # Every line the agent heard, as it heard it (the recogniser may have
                # misheard one and asked again).
                heard = [h.segment.text for h in watcher.lines(Speaker.CALLER)]
                assert heard and all(f"You: {line}" in shown for line in heard), shown
                assert "Agent: Hi, thanks for calling Bella Salon" in shown, shown
                await page.click("#hangup")
                await page.wait_for_function("window.vmDemo.state === 'ended'")
                ended = await watcher.wait(watcher.ended, 10, "CallEnded")
                assert ended.reason is EndReason.HANGUP
            finally:
                await watcher.stop()
    finally:
        await nc.drain()

    auth = mesh.auth(TENANT)
    async with httpx.AsyncClient(timeout=10) as http:
        [booked] = await appointments_tomorrow_at(
            http, mesh.url("calendar"), TENANT, auth, days, clock(11, 0)
        )
        assert booked["status"] == "booked" and booked["name"].lower().startswith("mary")

        async def transcript() -> Any:
            response = await http.get(
                f"{mesh.url('transcript')}/v1/{TENANT}/calls/{call_id}/transcript", headers=auth
            )
            if response.status_code != 200:
                return None
            segments = response.json()["segments"]
            return segments if len(segments) >= len(watcher.segments) else None

        segments = await wait_until(transcript, 15, what="the stored transcript")
    speakers = [s["speaker"] for s in segments]
    assert speakers.count(Speaker.CALLER.value) == said
    assert speakers.count(Speaker.AGENT.value) == said + 1
