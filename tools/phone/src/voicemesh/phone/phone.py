"""A phone without an iPhone: registers a VoIP token, receives pushes, answers over WebRTC.

``SimulatedPhone`` does what the iOS app does: it registers its PushKit token with the
push service, "receives" VoIP pushes by reading the APNs simulator's record for its token,
checks each push the way iOS would (a call must be reportable to CallKit from the payload
alone), and answers by POSTing an SDP offer to the push's ``signaling_url`` with the call
token (WHIP, through the test kit's ``WhipCaller``), playing a WAV or a tone as the caller
and recording what it hears.
``pick_up``/``dial`` keep the call open instead: the returned ``PhoneCall`` speaks lines on
cue (``CallerVoice``) and tells when the agent has stopped talking, so a scripted caller can
hold a whole conversation. The push's ``traceparent`` goes along as a header, so the
gateway's side of the call joins the trace the call request started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiortc import MediaStreamTrack

from voicemesh.common.runtime.speech import resample
from voicemesh.phone.voice import CallerVoice, synthesize
from voicemesh.testkit.tracks import RATE, ToneTrack, WavTrack
from voicemesh.testkit.whip import CallRefused, WhipCaller

__all__ = [
    "AnswerReport",
    "CallRefused",
    "NotReportable",
    "PhoneCall",
    "SimulatedPhone",
    "check_reportable",
    "dial",
]

log = logging.getLogger(__name__)


class NotReportable(ValueError):
    """A VoIP push iOS could not report to CallKit (the app would be killed for it)."""


def check_reportable(payload: dict[str, Any]) -> dict[str, Any]:
    """What CallKit's ``reportNewIncomingCall`` needs, taken from the payload alone."""
    try:
        call_uuid = uuid.UUID(str(payload["uuid"]))
    except (KeyError, ValueError) as exc:
        raise NotReportable("no RFC 4122 'uuid' to report the call under") from exc
    handle, caller = payload.get("handle"), payload.get("callerName")
    if not isinstance(handle, str) or not isinstance(caller, str):
        raise NotReportable("'handle' and 'callerName' must be strings")
    if not isinstance(payload.get("hasVideo"), bool):
        raise NotReportable("'hasVideo' must be a boolean")
    if payload.get("action", "ring") == "ring":
        for key in ("signaling_url", "call_token", "call_id", "tenant"):
            if not payload.get(key):
                raise NotReportable(f"a ringing push without {key!r} cannot be answered")
    return {"uuid": str(call_uuid), "handle": handle, "callerName": caller}


@dataclass
class AnswerReport:
    connected: bool
    frames_heard: int = 0
    rms_heard: float = 0.0
    status: int = 0
    location: str | None = None
    ice_servers: list[str] = field(default_factory=list)


class SimulatedPhone:
    def __init__(
        self,
        *,
        token: str,
        user_id: str,
        tenant: str,
        bundle_id: str,
        apnssim_url: str,
        push_url: str | None = None,
        api_key: str | None = None,
        environment: str = "production",
    ) -> None:
        self.token = token.lower()
        self.user_id = user_id
        self.tenant = tenant
        self.bundle_id = bundle_id
        self.apnssim_url = apnssim_url.rstrip("/")
        self.push_url = push_url.rstrip("/") if push_url else None
        self.api_key = api_key
        self.environment = environment
        self._seen = 0

    async def register(self, http: httpx.AsyncClient) -> None:
        """Bind the token to the app's VoIP topic at "APNs", then register it with push."""
        bound = await http.put(
            f"{self.apnssim_url}/v1/tokens/{self.token}", json={"topic": f"{self.bundle_id}.voip"}
        )
        bound.raise_for_status()
        if self.push_url:
            registered = await http.post(
                f"{self.push_url}/v1/{self.tenant}/devices",
                json={
                    "user_id": self.user_id,
                    "token": self.token,
                    "bundle_id": self.bundle_id,
                    "environment": self.environment,
                },
                headers={"Authorization": f"Bearer {self.api_key}"},
            )
            registered.raise_for_status()

    async def next_push(self, http: httpx.AsyncClient, timeout: float = 30.0) -> dict[str, Any]:
        """The next VoIP push APNs accepted for this phone, checked like iOS would."""
        deadline = time.monotonic() + timeout
        while True:
            response = await http.get(
                f"{self.apnssim_url}/v1/pushes", params={"token": self.token, "since": self._seen}
            )
            response.raise_for_status()
            for push in response.json()["pushes"]:
                self._seen = max(self._seen, int(push["seq"]))
                if push["status"] == 200 and push["push_type"] == "voip":
                    payload: dict[str, Any] = push["payload"]
                    check_reportable(payload)
                    return payload
            if time.monotonic() > deadline:
                raise TimeoutError("no VoIP push arrived")
            await asyncio.sleep(0.05)

    async def pick_up(
        self, http: httpx.AsyncClient, payload: dict[str, Any], *, connect_timeout_s: float = 10.0
    ) -> PhoneCall:
        """Answer a ringing push and keep the call open (``PhoneCall.hang_up`` ends it)."""
        return await dial(
            http,
            payload["signaling_url"],
            payload["call_token"],
            traceparent=payload.get("traceparent"),
            connect_timeout_s=connect_timeout_s,
        )

    async def answer(
        self,
        http: httpx.AsyncClient,
        payload: dict[str, Any],
        *,
        wav: str | None = None,
        listen_s: float = 2.0,
    ) -> AnswerReport:
        """Answer like CallKit's "accept": WHIP offer with the call token, talk, hang up."""
        source: MediaStreamTrack = WavTrack(wav) if wav else ToneTrack(amplitude=TONE_AMPLITUDE)
        caller = WhipCaller(http, track=source)
        report = AnswerReport(connected=False)
        try:
            response = await caller.connect(
                payload["signaling_url"],
                payload["call_token"],
                traceparent=payload.get("traceparent"),
            )
            report.status = response.status_code
            if response.status_code != 201:
                return report
            report.location, report.ice_servers = caller.location, caller.ice_servers
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(caller.up.wait(), 10)
            report.connected = caller.up.is_set()
            if report.connected:
                await asyncio.sleep(listen_s)  # the call itself: talk and listen
            levels = [level for _, level in caller.heard.levels]
            report.frames_heard = len(levels)
            report.rms_heard = sum(levels) / len(levels) if levels else 0.0
            await caller.hangup()
        finally:
            await caller.close()
        return report


#: A caller saying "aaah" (s16 peak 8000 of 32767).
TONE_AMPLITUDE = 8000 / 32767

#: A received 20 ms frame louder than this (RMS of s16 samples) is the agent talking.
VOICE_RMS = 200.0
#: Voice shorter than this with quiet around it is a click (Opus can start with one), not
#: a word; quiet shorter than ``WORD_GAP_S`` does not end a run of voice.
MIN_WORD_S = 0.1
WORD_GAP_S = 0.2


def utterances(heard: Iterable[tuple[float, float]], gap_s: float) -> list[tuple[float, float]]:
    """(first, last) times of each run of voiced frames in ``heard`` ((time, RMS) per
    frame), runs being split at pauses of at least ``gap_s``."""
    runs: list[tuple[float, float]] = []
    for at, rms in heard:
        if rms <= VOICE_RMS:
            continue
        if runs and at - runs[-1][1] < gap_s:
            runs[-1] = (runs[-1][0], at)
        else:
            runs.append((at, at))
    return runs


def last_word_at(heard: Sequence[tuple[float, float]]) -> float | None:
    """The end of the last run of voiced frames in ``heard`` lasting ``MIN_WORD_S`` or
    more (runs split at ``WORD_GAP_S`` of quiet), or ``None``. ``utterances`` read from the
    end: ``wait_quiet`` asks every 50 ms, so it stops at the first run long enough."""
    start = end = None
    for at, rms in reversed(heard):
        if rms <= VOICE_RMS:
            continue
        if start is None or end is None or start - at >= WORD_GAP_S:
            start = end = at  # the last frame of an earlier run
        else:
            start = at
        if end - start >= MIN_WORD_S:
            return end
    return None


class PhoneCall:
    """The phone's side of one connected call: speak on cue, hear the agent, hang up."""

    def __init__(self, caller: WhipCaller, voice: CallerVoice) -> None:
        self.caller = caller
        self.voice = voice

    @property
    def connected(self) -> asyncio.Event:
        return self.caller.up

    @property
    def disconnected(self) -> asyncio.Event:
        return self.caller.down

    @property
    def location(self) -> str | None:
        return self.caller.location

    @property
    def ice_servers(self) -> list[str]:
        return self.caller.ice_servers

    @property
    def heard(self) -> list[tuple[float, float]]:
        """(monotonic time, RMS) of every frame heard from the gateway."""
        return self.caller.heard.levels

    @property
    def frames_heard(self) -> int:
        return len(self.heard)

    def voice_frames(self) -> int:
        """How many frames of the agent's voice (not silence) the phone has heard."""
        return sum(1 for _, rms in self.heard if rms > VOICE_RMS)

    def first_words(
        self, gap_s: float = 0.6, min_s: float = 0.3, until: float | None = None
    ) -> bytes:
        """The recorded audio of the agent's first utterance lasting at least ``min_s``
        (the greeting), as 16 kHz mono PCM: up to its first pause of ``gap_s``, or with
        ``until`` (monotonic; say, when the caller began to answer) up to then, pauses
        and all.

        Shorter runs are not words: the Opus decoder's first frames can carry a click
        loud enough to pass for voice, a second or more before a busy agent speaks."""
        runs = utterances(self.heard, gap_s)
        first = next((r for r in runs if r[1] - r[0] >= min_s), None)
        if first is None:
            return b""
        return self.audio_between(first[0] - 0.1, first[1] + 0.1 if until is None else until)

    def audio_between(self, start: float, end: float) -> bytes:
        """What the phone heard (``dial(record=True)``) from ``start`` to ``end``
        (monotonic), as 16 kHz mono PCM."""
        return b"".join(
            resample(pcm, RATE, 16000)
            for at, pcm in self.caller.heard.recording
            if start <= at <= end
        )

    def last_voice_at(self) -> float | None:
        """When the agent's voice was last heard: the end of the last voiced run lasting at
        least ``MIN_WORD_S`` (a click is not the agent talking)."""
        return last_word_at(self.heard)

    async def say(self, text: str) -> float:
        """Speak ``text`` (eSpeak NG); returns the monotonic time its last frame went out."""
        # 16 kHz, the rate the agent hears at: the gateway's resampler gives it back intact.
        pcm = await asyncio.to_thread(synthesize, text, 16000)
        return await self.voice.play(pcm, 16000)

    async def play(self, pcm: bytes, sample_rate: int) -> float:
        return await self.voice.play(pcm, sample_rate)

    async def wait_quiet(
        self, quiet_s: float = 0.8, *, since: float = 0.0, timeout: float = 20.0
    ) -> None:
        """Until the agent has spoken after ``since`` (monotonic) and then been silent for
        ``quiet_s``."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.last_voice_at()
            if last is not None and last > since and time.monotonic() - last >= quiet_s:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the agent did not finish speaking")
            await asyncio.sleep(0.05)

    async def hang_up(self) -> int | None:
        """``DELETE`` the session (the gateway ends the call with ``hangup``), then close."""
        status = None
        if self.caller.location and self.caller.pc is not None:
            status = (await self.caller.hangup()).status_code
        await self.close()
        return status

    async def close(self) -> None:
        """Stop listening and close the peer connection; calling it twice is harmless."""
        await self.caller.close()


async def dial(
    http: httpx.AsyncClient,
    signaling_url: str,
    call_token: str,
    *,
    traceparent: str | None = None,
    connect_timeout_s: float = 10.0,
    record: bool = False,
) -> PhoneCall:
    """POST an offer to ``signaling_url`` with ``call_token`` and wait until ICE connects.

    With ``record`` the call keeps the PCM it hears, so a test can recognise what the agent
    said from the audio itself (``PhoneCall.audio_between``).

    Raises ``CallRefused`` when the gateway does not answer ``201`` and ``TimeoutError`` when
    the connection does not come up; the peer connection is closed in both cases.
    """
    voice = CallerVoice()
    caller = WhipCaller(http, track=voice, record=record, loud_rms=VOICE_RMS)
    await caller.dial(
        signaling_url, call_token, traceparent=traceparent, connect_timeout_s=connect_timeout_s
    )
    return PhoneCall(caller, voice)
