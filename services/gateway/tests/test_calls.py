"""Real aiortc callers through the in-process gateway, with an echo agent on NATS."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from voicemesh.common import ControlCommand, ControlMessage, TranscriptSegment, encode_frame
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.audio import AudioFrame
from voicemesh.common.runtime.tokens import issue_call_token
from voicemesh.testkit.fixtures import wait_until
from voicemesh.testkit.tracks import dominant_frequency, rms
from voicemesh.testkit.whip import WhipCaller

from .conftest import API_KEY, OPS_TOKEN, SECRET, TENANT, GatewayHarness


async def _call(h: GatewayHarness, **caller_options: Any) -> tuple[WhipCaller, str]:
    caller = WhipCaller(h.http, **caller_options)
    created = await caller.create(TENANT, API_KEY)
    response = await caller.connect(created["whip_url"], created["token"])
    assert response.status_code == 201, response.text
    await wait_until(caller.connected, 15, what="ICE connected")
    return caller, created["call_id"]


async def test_tone_reaches_audio_in_and_the_echo_comes_back(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    caller, call_id = await _call(h)
    try:
        await wait_until(lambda: len(h.agent.frames.get(call_id, [])) >= 60, 10, what="audio.in")
        frames = h.agent.frames[call_id]
        assert {f.sample_rate for f in frames} == {16000}
        assert {len(f.pcm) for f in frames} == {640}
        seqs = [f.seq for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert abs(dominant_frequency(h.agent.pcm(call_id, 50), 16000) - 440) < 10

        # The echo arrives back at the caller as 48 kHz audio at the same pitch.
        await wait_until(lambda: len(caller.heard.loud_at) >= 25, 10, what="echo at the caller")
        heard = caller.heard.recent(25)
        assert rms(heard) > 1000
        assert abs(dominant_frequency(heard, 48000) - 440) < 10

        assert h.lifecycle.types(call_id)[:1] == ["call.connected"]
        connected = h.lifecycle.events[0]
        assert connected.vertical == "salon" and connected.direction == "inbound"
        ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
        load = await h.http.get("/v1/gateway/load", headers=ops)
        assert load.status_code == 200
        assert (load.json()["active"], load.json()["capacity"], load.json()["free"]) == (1, 8, 7)
        assert call_id not in load.text  # counts only: no call id leaves this worker
    finally:
        response = await caller.hangup()
        await caller.close()
    assert response.status_code == 200
    await wait_until(lambda: h.lifecycle.ended(call_id), 5, what="call.ended")
    assert [e.reason.value for e in h.lifecycle.ended(call_id)] == ["hangup"]
    assert h.lifecycle.types(call_id) == ["call.connected", "call.ended"]
    load = await h.http.get("/v1/gateway/load", headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert load.json()["active"] == 0
    assert (await h.http.delete(caller.location or "")).status_code == 404


async def test_interrupt_flushes_agent_audio_and_agent_hangup_ends_the_call(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway()
    h.agent.echo = False
    caller, call_id = await _call(h, datachannel=True)
    try:
        call = h.gw.calls.calls[call_id]
        # The agent sends 1.5 s of speech at once: it queues and plays out in real time.
        t = np.arange(320) / 16000
        tone = (0.3 * 32767 * np.sin(2 * np.pi * 660 * t)).astype("<i2").tobytes()
        for seq in range(75):
            await h.nats.publish(
                subjects.audio_out(TENANT, call_id),
                encode_frame(AudioFrame.now(seq, tone, 16000)),
            )
        await wait_until(lambda: call.playout.buffered_ms > 500, 5, what="queued agent audio")
        await wait_until(lambda: len(caller.heard.loud_at) >= 5, 5, what="agent audio heard")
        assert abs(dominant_frequency(caller.heard.recent(5), 48000) - 660) < 15

        interrupt = ControlMessage(
            tenant=TENANT, call_id=call_id, source="agent", command=ControlCommand.INTERRUPT
        )
        await h.nats.publish(
            subjects.call_control(TENANT, call_id), interrupt.model_dump_json().encode()
        )
        await wait_until(lambda: call.playout.buffered_ms == 0, 2, what="flushed playout")
        heard_at_interrupt = len(caller.heard.loud_at)
        await wait_until(lambda: caller.heard.frames > 0 and rms(caller.heard.recent(10)) < 100, 3)
        assert len(caller.heard.loud_at) - heard_at_interrupt < 10  # not the remaining ~1 s

        # The live transcript reaches the page's data channel.
        segment = TranscriptSegment(
            tenant=TENANT,
            call_id=call_id,
            source="agent",
            segment_id=f"{call_id}:agent:0",
            speaker="agent",
            text="Hello, this is the salon.",
            start_s=0,
            end_s=1,
        )
        await h.nats.publish(
            subjects.call_transcript(TENANT, call_id), segment.model_dump_json().encode()
        )
        await wait_until(lambda: any("salon" in m for m in caller.messages), 5, what="transcript")
        assert json.loads(caller.messages[-1])["speaker"] == "agent"

        # A malformed control message is dead-lettered with the reason; the call goes on.
        dead: list[bytes] = []

        async def on_dead(msg: Any) -> None:
            dead.append(msg.data)

        sub = await h.nats.subscribe(subjects.dead_letter(TENANT), cb=on_dead)
        await h.nats.publish(subjects.call_control(TENANT, call_id), b'{"command": "explode"}')
        await wait_until(lambda: dead, 5, what="a dead letter")
        await sub.unsubscribe()
        letter = json.loads(dead[0])
        assert letter["consumer"] == "gateway-control" and "command" in letter["reason"]
        assert call_id in h.gw.calls.calls

        hangup = ControlMessage(
            tenant=TENANT, call_id=call_id, source="agent", command=ControlCommand.HANGUP
        )
        await h.nats.publish(
            subjects.call_control(TENANT, call_id), hangup.model_dump_json().encode()
        )
        await wait_until(lambda: h.lifecycle.ended(call_id), 5, what="call.ended")
        assert [e.reason.value for e in h.lifecycle.ended(call_id)] == ["agent_hangup"]
        await wait_until(lambda: any("agent_hangup" in m for m in caller.messages), 5)
    finally:
        await caller.close()


async def test_pushed_call_is_answered_then_connected(start_gateway: Callable[..., Any]) -> None:
    h: GatewayHarness = await start_gateway()
    call_id = "pushed-call-1"
    token, _ = issue_call_token(SECRET, TENANT, call_id)  # what push puts in the VoIP push
    caller = WhipCaller(h.http)
    try:
        response = await caller.connect(f"/v1/{TENANT}/calls/{call_id}/whip", token)
        assert response.status_code == 201, response.text
        links = response.headers["link"]
        assert 'rel="ice-server"' in links and "turns:turn.example.com:443" in links
        await wait_until(lambda: "call.connected" in h.lifecycle.types(call_id), 15)
        assert h.lifecycle.types(call_id) == ["call.answered", "call.connected"]
        assert next(e for e in h.lifecycle.events if e.type == "call.connected").direction == (
            "outbound"
        )
    finally:
        await caller.close()


async def test_reconnect_within_grace_keeps_the_call(start_gateway: Callable[..., Any]) -> None:
    h: GatewayHarness = await start_gateway(reconnect_grace_s=10.0)
    caller, call_id = await _call(h)
    try:
        first_location = caller.location
        await wait_until(lambda: len(h.agent.frames.get(call_id, [])) >= 10, 10)
        # A reconnect offer that cannot be negotiated is refused; the call waits for a
        # good one on the same session URL.
        probe = WhipCaller(h.http)
        try:
            offer = await probe._offer()
        finally:
            await probe.close()
        for codec in ("opus/48000/2", "G722/8000", "PCMU/8000", "PCMA/8000"):
            offer = offer.replace(codec, "X-NONE/8000")
        bad = await h.http.post(
            first_location or "", content=offer, headers={"Content-Type": "application/sdp"}
        )
        assert bad.status_code == 400 and "negotiate" in bad.json()["detail"], bad.text
        assert h.gw.calls.calls[call_id].state == "grace"
        # Wi-Fi → cellular: the old peer connection dies, the phone offers again.
        response = await caller.reconnect()
        assert response.status_code == 201, response.text
        assert caller.location != first_location
        await wait_until(caller.connected, 15, what="reconnected")
        before = len(h.agent.frames[call_id])
        await wait_until(lambda: len(h.agent.frames[call_id]) >= before + 25, 10)
        seqs = [f.seq for f in h.agent.frames[call_id]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert h.lifecycle.types(call_id) == ["call.connected"]
        assert (await h.http.delete(first_location or "")).status_code == 404
    finally:
        await caller.hangup()
        await caller.close()
    await wait_until(lambda: h.lifecycle.ended(call_id), 5)
    assert h.lifecycle.types(call_id) == ["call.connected", "call.ended"]


async def test_lost_peer_without_reconnect_ends_after_the_grace(
    start_gateway: Callable[..., Any],
) -> None:
    h: GatewayHarness = await start_gateway(reconnect_grace_s=0.5, max_duration_s=30)
    caller, call_id = await _call(h)
    await caller.close()  # the phone vanishes without DELETE
    await wait_until(lambda: h.lifecycle.ended(call_id), 10, what="call.ended")
    assert [e.reason.value for e in h.lifecycle.ended(call_id)] == ["ice_failed"]

    h2_caller, call2 = await _call(h)
    try:
        h.gw.calls.max_duration_s = 0.5
        await wait_until(lambda: h.lifecycle.ended(call2), 10, what="max duration")
        assert [e.reason.value for e in h.lifecycle.ended(call2)] == ["max_duration"]
    finally:
        await h2_caller.close()


async def test_offer_that_never_connects_times_out(start_gateway: Callable[..., Any]) -> None:
    h: GatewayHarness = await start_gateway(connect_timeout_s=0.5)
    caller = WhipCaller(h.http)
    created = await caller.create(TENANT, API_KEY)
    try:
        sdp = await caller._offer()  # offered, but the caller never applies the answer
        headers = {"Authorization": f"Bearer {created['token']}", "Content-Type": "application/sdp"}
        response = await h.http.post(created["whip_url"], content=sdp, headers=headers)
        assert response.status_code == 201
        await wait_until(lambda: h.lifecycle.ended(created["call_id"]), 10, what="timeout")
        assert [e.reason.value for e in h.lifecycle.ended(created["call_id"])] == ["timeout"]
        # An ended call cannot be revived with a fresh token for it.
        token, _ = issue_call_token(SECRET, TENANT, created["call_id"])
        headers["Authorization"] = f"Bearer {token}"
        again = await h.http.post(created["whip_url"], content=sdp, headers=headers)
        assert again.status_code == 410
    finally:
        await caller.close()


async def test_shutdown_ends_every_call(start_gateway: Callable[..., Any]) -> None:
    h: GatewayHarness = await start_gateway()
    callers = [await _call(h) for _ in range(2)]
    try:
        await h.gw.end_calls()
        for _, call_id in callers:
            assert [e.reason.value for e in h.lifecycle.ended(call_id)] == ["server_shutdown"]
        assert h.gw.calls.active == 0
        response = await h.http.post(
            f"/v1/{TENANT}/calls", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert response.status_code == 503
    finally:
        for caller, _ in callers:
            await caller.close()
