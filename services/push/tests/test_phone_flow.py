"""The seed's iPhone flow end to end: CallRequested → VoIP push at the APNs simulator → the
simulated phone checks it like iOS and answers over WebRTC → the real gateway (its own
process) connects the call, and audio flows both ways through NATS.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from voicemesh.apnssim.admin import admin_app
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.audio import AudioFrame, decode_frame, encode_frame, frame_bytes
from voicemesh.common.contracts.events import CallRequested, new_call_id
from voicemesh.phone import SimulatedPhone
from voicemesh.push.app import PushComponents
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import ProcessTracker, wait_until

from .conftest import BUNDLE, SECRET, PushHarness

AGENT_RATE = 16000


async def _speak_as_agent(nats: NatsClient, tenant: str, call_id: str, seconds: float) -> None:
    """A 660 Hz "agent voice" on audio_out, paced in real time as the agent paces it."""
    samples = frame_bytes(AGENT_RATE) // 2
    loop = asyncio.get_running_loop()
    start = loop.time()
    for seq in range(int(seconds * 50)):
        t = (np.arange(samples) + seq * samples) / AGENT_RATE
        pcm = (np.sin(2 * math.pi * 660 * t) * 8000).astype(np.int16).tobytes()
        await nats.publish(
            subjects.audio_out(tenant, call_id),
            encode_frame(AudioFrame.now(seq, pcm, AGENT_RATE)),
        )
        await asyncio.sleep(max(0.0, start + (seq + 1) * 0.02 - loop.time()))


async def test_pushed_call_is_answered_by_the_phone_and_connected_by_the_real_gateway(
    make_push: Callable[..., Awaitable[PushHarness]],
    nats: NatsClient,
    nats_url: str,
    redis_url: str,
    processes: ProcessTracker,
) -> None:
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    push = await make_push(gateway_public_url=gateway_url)
    tenant = push.tenants[0]
    gateway = processes.python_module(
        "voicemesh.gateway",
        {
            "VOICEMESH_NATS_URL": nats_url,
            "VOICEMESH_REDIS_URL": redis_url,
            "VOICEMESH_CALL_TOKEN_SECRET": SECRET,
            "VOICEMESH_TENANTS": f"{tenant}:salon",
            "VOICEMESH_API_KEYS": "",
            "VOICEMESH_WORKER_URL": gateway_url,
        },
        http_port=gateway_port,
    )
    caller_frames: list[float] = []

    async def on_audio_in(msg: Msg) -> None:
        frame = decode_frame(msg.data)
        pcm = np.frombuffer(frame.pcm, dtype=np.int16).astype(np.float64)
        caller_frames.append(float(np.sqrt(np.mean(pcm**2))) if pcm.size else 0.0)

    http = httpx.AsyncClient(
        mounts={
            "http://apnssim.test": httpx.ASGITransport(app=admin_app(push.sim)),
            "http://push.test": httpx.ASGITransport(app=push.service.http),
        },
        timeout=10,
    )
    await gateway.wait_healthy()
    async with http:
        phone = SimulatedPhone(
            token="ab" * 32,
            user_id="zoe",
            tenant=tenant,
            bundle_id=BUNDLE,
            apnssim_url="http://apnssim.test",
            push_url="http://push.test",
            api_key=push.api_keys[tenant],
        )
        await phone.register(http)
        event = CallRequested(
            tenant=tenant, call_id=new_call_id(), source="test", user_id="zoe", caller_name="Ava"
        )
        call_id = event.call_id
        await nats.subscribe(subjects.audio_in(tenant, call_id), cb=on_audio_in)
        await nats.jetstream().publish(
            subjects.call_lifecycle(tenant, call_id),
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": event.event_id},
        )
        payload = await phone.next_push(http, timeout=10)
        assert payload["call_id"] == call_id and payload["callerName"] == "Ava"
        assert payload["signaling_url"] == f"{gateway_url}/v1/{tenant}/calls/{call_id}/whip"

        answering = asyncio.create_task(phone.answer(http, payload, listen_s=2.5))
        await wait_until(lambda: push.of_type("call.connected", call_id), 15, what="connected")
        await _speak_as_agent(nats, tenant, call_id, 1.5)
        report = await answering

    assert report.status == 201 and report.connected
    assert report.frames_heard > 50 and report.rms_heard > 500  # the agent's 660 Hz came back
    assert sum(1 for rms in caller_frames if rms > 1000) > 20  # the phone's tone reached NATS
    [answered] = push.of_type("call.answered", call_id)
    [connected] = push.of_type("call.connected", call_id)
    assert answered.source == connected.source == "gateway"
    assert connected.vertical == "salon"  # type: ignore[union-attr]
    await wait_until(lambda: push.of_type("call.ended", call_id), 10, what="hang-up")
    assert await push.service.get(PushComponents).calls.state(tenant, call_id) == "answered"
    assert not push.of_type("call.missed", call_id)
