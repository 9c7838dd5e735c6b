"""Real NATS peers for testing and benchmarking the agent without the rest of the mesh.

``SimulatedCaller`` is the gateway's side of a call: it sends 20 ms frames of 16 kHz PCM on
``audio.in`` in real time (eSpeak speech for scripted lines, silence otherwise), records the
agent's ``audio.out`` frames, control messages and transcript segments. ``ToolDesk`` answers
tool requests on real NATS the way the crm, calendar and sms services do (``ToolResult``
replies), keeping what it was asked, for tests that run without those services.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voicemesh.agent.speech import espeak, resample
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.audio import AudioFrame, decode_frame, encode_frame
from voicemesh.common.contracts.events import (
    ControlMessage,
    ToolError,
    ToolErrorCode,
    ToolRequest,
    ToolResult,
    TranscriptSegment,
)

__all__ = ["AgentAudio", "SimulatedCaller", "ToolDesk", "cough", "decode_agent_audio"]

FRAME_BYTES = 640  # 20 ms at 16 kHz


def cough(duration_ms: int = 160, seed: int = 7) -> bytes:
    """A cough-like burst: loud broadband noise with a fast decay, 16 kHz PCM."""
    rng = np.random.default_rng(seed)
    n = 16 * duration_ms
    envelope = np.exp(-np.linspace(0, 5, n))
    noise = rng.normal(0, 1, n) * envelope * 12000
    return bytes(np.clip(noise, -32768, 32767).astype(np.int16).tobytes())


@dataclass
class AgentAudio:
    received_at: float
    pcm: bytes
    sample_rate: int


@dataclass
class SimulatedCaller:
    """The caller's end of one call, talking to the agent over NATS."""

    nc: NatsClient
    tenant: str
    call_id: str
    audio: list[AgentAudio] = field(default_factory=list)
    controls: list[ControlMessage] = field(default_factory=list)
    segments: list[TranscriptSegment] = field(default_factory=list)
    #: partial segments (when they arrived, what they said) of lines still being spoken
    captions: list[tuple[float, TranscriptSegment]] = field(default_factory=list)
    speech_started_at: list[float] = field(default_factory=list)
    speech_ended_at: list[float] = field(default_factory=list)
    voice_rate: int = 170

    def __post_init__(self) -> None:
        self._outbox: asyncio.Queue[tuple[bytes, asyncio.Future[float]]] = asyncio.Queue()
        self._subs: list[Subscription] = []
        self._sender: asyncio.Task[None] | None = None
        self._seq = 0
        self._agent_line_at: list[float] = []  # when each agent segment arrived (monotonic)

    async def start(self) -> None:
        self._subs = [
            await self.nc.subscribe(
                subjects.audio_out(self.tenant, self.call_id), cb=self._on_audio
            ),
            await self.nc.subscribe(
                subjects.call_control(self.tenant, self.call_id), cb=self._on_control
            ),
            await self.nc.subscribe(
                subjects.call_transcript(self.tenant, self.call_id), cb=self._on_segment
            ),
        ]
        self._sender = asyncio.create_task(self._send_loop())

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_audio(self, msg: Msg) -> None:
        frame = decode_frame(msg.data)
        self.audio.append(AgentAudio(time.monotonic(), frame.pcm, frame.sample_rate))

    async def _on_control(self, msg: Msg) -> None:
        self.controls.append(ControlMessage.model_validate_json(msg.data))

    async def _on_segment(self, msg: Msg) -> None:
        segment = TranscriptSegment.model_validate_json(msg.data)
        if not segment.final:  # a live caption of a line still being spoken
            self.captions.append((time.monotonic(), segment))
            return
        self.segments.append(segment)
        if segment.speaker.value == "agent":
            # A line is published as its audio starts, or, streamed, once it has been
            # spoken: then its segment spans the time it took to say.
            spoken_s = segment.end_s - segment.start_s
            self._agent_line_at.append(time.monotonic() - spoken_s)

    async def _send_loop(self) -> None:
        subject = subjects.audio_in(self.tenant, self.call_id)
        silence = bytes(FRAME_BYTES)
        pending: bytes = b""
        done: asyncio.Future[float] | None = None
        t0 = time.monotonic()
        index = 0
        while True:
            if not pending and not self._outbox.empty():
                pending, done = self._outbox.get_nowait()
            if pending:
                chunk, pending = pending[:FRAME_BYTES], pending[FRAME_BYTES:]
                chunk = chunk.ljust(FRAME_BYTES, b"\0")
            else:
                chunk = silence
            frame = AudioFrame.now(self._seq, chunk, 16000)
            self._seq += 1
            await self.nc.publish(subject, encode_frame(frame))
            if not pending and done is not None:
                if not done.done():
                    done.set_result(time.monotonic() + 0.02)
                done = None
            index += 1
            delay = t0 + index * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                # The loop was held up: go on in real time rather than burst to catch up.
                t0, index = time.monotonic(), 0

    async def play(self, pcm: bytes) -> float:
        """Send ``pcm`` (16 kHz) as the caller's voice; returns when its last frame is out."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.speech_started_at.append(time.monotonic())
        await self._outbox.put((pcm, done))
        ended = await done
        self.speech_ended_at.append(ended)
        return ended

    async def say(self, text: str) -> float:
        pcm = await espeak().synthesize(text, 16000, rate=self.voice_rate)
        return await self.play(pcm)

    def agent_lines(self) -> list[str]:
        return [s.text for s in self.segments if s.speaker.value == "agent"]

    def caller_lines(self) -> list[str]:
        return [s.text for s in self.segments if s.speaker.value == "caller"]

    async def wait_for_agent_line(self, count: int, timeout: float = 15.0) -> str:
        """Wait until the agent has said ``count`` lines and finished speaking the last.

        The agent publishes a line's segment as its audio starts (a streamed line, once
        spoken), so this waits for audio from then on, then for a pause in it: a caller who
        answered at the first hiccup of a busy agent's audio would talk over the rest.
        """
        deadline = time.monotonic() + timeout
        while len(self._agent_line_at) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agent said {self.agent_lines()}, expected {count} lines")
            await asyncio.sleep(0.05)
        line_at = self._agent_line_at[count - 1]
        while not self.audio or self.audio[-1].received_at < line_at:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no audio for the agent's line {self.agent_lines()[-1]!r}")
            await asyncio.sleep(0.05)
        await self.wait_quiet(timeout=max(0.1, deadline - time.monotonic()))
        return self.agent_lines()[count - 1]

    async def wait_quiet(self, quiet_s: float = 0.6, timeout: float = 15.0) -> None:
        """Until no agent audio arrived for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.audio[-1].received_at if self.audio else 0.0
            if self.audio and time.monotonic() - last >= quiet_s:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the agent kept talking")
            await asyncio.sleep(0.05)

    def first_audio_after(self, moment: float) -> float | None:
        return next((a.received_at for a in self.audio if a.received_at > moment), None)

    def audio_between(self, start: float, end: float) -> bytes:
        chunks = [
            resample(a.pcm, a.sample_rate, 16000)
            for a in self.audio
            if start <= a.received_at <= end
        ]
        return b"".join(chunks)


def decode_agent_audio(pcm: bytes, candidates: list[str]) -> str:
    """Which of ``candidates`` the agent's audio says, by recognising it against them all.

    The recogniser gets a grammar of exactly the candidate sentences (words it cannot
    pronounce are left out), so the answer says which sentence the audio holds.
    """
    from pocketsphinx import Decoder

    from voicemesh.agent.profiles import dictionary_words
    from voicemesh.agent.speech import DECODER_CONFIG, decode_blocking

    known = dictionary_words()
    cleaned: dict[str, str] = {}
    for sentence in candidates:
        words = [w for w in _words(sentence) if w in known]
        if words:
            cleaned[" ".join(words)] = sentence
    grammar = (
        "#JSGF V1.0; grammar check; public <s> = " + " | ".join(f"({c})" for c in cleaned) + ";"
    )
    decoder = Decoder(**DECODER_CONFIG)
    decoder.add_jsgf_string("check", grammar)
    decoder.activate_search("check")
    heard = decode_blocking(decoder, bytes(6400) + pcm + bytes(6400))
    return cleaned.get(heard, heard)


def _words(sentence: str) -> list[str]:
    cleaned = "".join(c if c.isalnum() or c in " '" else " " for c in sentence.lower())
    return cleaned.split()


ToolHandler = Callable[[ToolRequest], Awaitable[dict[str, Any]]]


class ToolDesk:
    """Answers ``vm.<tenant>.tool.*.*`` requests on real NATS with handlers per tool."""

    def __init__(self, nc: NatsClient, tenant: str) -> None:
        self._nc = nc
        self.tenant = tenant
        self.handlers: dict[str, ToolHandler] = {}
        self.requests: list[ToolRequest] = []
        self._sub: Subscription | None = None

    def on(self, tool: str) -> Callable[[ToolHandler], ToolHandler]:
        def register(handler: ToolHandler) -> ToolHandler:
            self.handlers[tool] = handler
            return handler

        return register

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            subjects.tool(self.tenant, "*", "*"), cb=self._on_request
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def calls(self, tool: str) -> list[ToolRequest]:
        return [r for r in self.requests if f"{r.service}.{r.name}" == tool]

    async def _on_request(self, msg: Msg) -> None:
        request = ToolRequest.model_validate_json(msg.data)
        self.requests.append(request)
        handler = self.handlers.get(f"{request.service}.{request.name}")
        try:
            if handler is None:
                raise ToolDeskError(ToolErrorCode.UNAVAILABLE, "not served")
            result = ToolResult(
                tenant=request.tenant,
                call_id=request.call_id,
                source="tooldesk",
                request_id=request.event_id,
                ok=True,
                result=await handler(request),
            )
        except ToolDeskError as exc:
            result = ToolResult(
                tenant=request.tenant,
                call_id=request.call_id,
                source="tooldesk",
                request_id=request.event_id,
                ok=False,
                error=ToolError(code=exc.code, message=str(exc)),
            )
        await msg.respond(result.model_dump_json().encode())


class ToolDeskError(Exception):
    def __init__(self, code: ToolErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def appointment(request: ToolRequest, appointment_id: str) -> dict[str, Any]:
    """A ``calendar.book`` answer shaped like ``AppointmentResult``."""
    start = datetime.fromisoformat(request.arguments["start"])
    return {
        "appointment": {
            "appointment_id": appointment_id,
            "start": start.isoformat(),
            "end": start.isoformat(),
            "name": request.arguments["name"],
            "phone": request.arguments.get("phone"),
            "status": "booked",
        },
        "created": True,
    }


def standard_desk(nc: NatsClient, tenant: str, *, conflicted: set[str] | None = None) -> ToolDesk:
    """A desk with the crm, calendar and sms tools every demo vertical uses.

    Bookings keep their start times (a second booking of the same start is ``slot_taken``);
    policy 412551 exists; ``conflicted`` names fail the conflict check.
    """
    desk = ToolDesk(nc, tenant)
    booked: dict[str, str] = {}
    adverse = {n.lower() for n in (conflicted or set())}

    @desk.on("calendar.book")
    async def book(request: ToolRequest) -> dict[str, Any]:
        start = str(request.arguments["start"])
        key = request.idempotency_key or ""
        if start in booked and booked[start] != key:
            raise ToolDeskError(ToolErrorCode.SLOT_TAKEN, "that slot is taken")
        booked[start] = key
        return appointment(request, f"apt{len(booked)}")

    @desk.on("sms.send")
    async def send(request: ToolRequest) -> dict[str, Any]:
        return {"idempotency_key": request.idempotency_key or "", "queued": True}

    @desk.on("crm.upsert_contact")
    async def upsert(request: ToolRequest) -> dict[str, Any]:
        now = datetime.now().astimezone().isoformat()
        contact = {"contact_id": "c1", **request.arguments, "created_at": now, "updated_at": now}
        return {"contact": contact, "created": True}

    @desk.on("crm.search_listings")
    async def listings(request: ToolRequest) -> dict[str, Any]:
        city = request.arguments.get("city")
        rows: list[dict[str, Any]] = [
            {"listing_id": "l1", "address": "12 Elm Street", "city": "Riverside", "price": 425000,
             "beds": 3, "baths": 2.0, "status": "active"},
            {"listing_id": "l2", "address": "4 Lake Road", "city": "Lakewood", "price": 610000,
             "beds": 4, "baths": 3.0, "status": "active"},
        ]  # fmt: skip
        beds = int(request.arguments.get("min_beds") or 0)
        return {"listings": [r for r in rows if r["city"] == city and int(r["beds"]) >= beds]}

    @desk.on("crm.conflict_check")
    async def conflict(request: ToolRequest) -> dict[str, Any]:
        parties = [str(p) for p in request.arguments["parties"]]
        matches = [
            {"party": p, "matter_id": "m1", "matter": "existing matter", "role": "client"}
            for p in parties
            if p.lower() in adverse
        ]
        return {"clear": not matches, "matches": matches}

    @desk.on("crm.lookup_policy")
    async def policy(request: ToolRequest) -> dict[str, Any]:
        if request.arguments.get("policy_number") != "412551":
            raise ToolDeskError(ToolErrorCode.NOT_FOUND, "no such policy")
        return {"policy_number": "412551", "holder_name": "Anna Garcia", "kind": "auto",
                "status": "active", "deductible": 500}  # fmt: skip

    @desk.on("crm.file_claim")
    async def claim(request: ToolRequest) -> dict[str, Any]:
        if request.arguments.get("policy_number") != "412551":
            raise ToolDeskError(ToolErrorCode.NOT_FOUND, "no such policy")
        return {"claim_id": "77", "policy_number": "412551",
                "incident_date": request.arguments["incident_date"], "status": "open",
                "filed_at": datetime.now().astimezone().isoformat()}  # fmt: skip

    return desk
