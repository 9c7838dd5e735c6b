"""Every vertical's scripted call through the real gateway, on the whole mesh.

For each vertical's demo tenant the tenant backend creates a call at the gateway with its
API key, vouching for the caller's number (``{"phone": …}``), and an aiortc peer (the
simulated phone) connects over WebRTC and says the profile's demo script in eSpeak speech,
answering each of the agent's replies once it has been heard to the end; the agent hears it through
the gateway (Opus, resampling, jitter buffer), calls the real crm, calendar and sms
services, and hangs up after its goodbye. The phone records what it hears, and the test
recognises from that audio the agent's greeting (among all six verticals' greetings) and
each of its replies (among the lines it spoke on the call). The calls run at the same
time, as they would in one pod per vertical. Then each vertical's outcome is checked where
it was: the appointment in the calendar at the spoken local time (the insurance claim in
the crm's tool events instead), the confirmation (or claim) text in the sms outbox, sent to
the number the backend vouched for and to no other (not the one the caller spoke), both
sides in the transcript service, the call in the audit chain, and the chain verifies.

The salon's call, which books through a VoIP push instead, is ``test_outbound_call.py``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.common.contracts.events import EndReason, Speaker
from voicemesh.phone import dial
from voicemesh.phone.phone import PhoneCall
from voicemesh.phone.script import CallWatcher, Line, converse
from voicemesh.testkit.agent import decode_agent_audio
from voicemesh.testkit.fixtures import LocalDays, wait_until
from voicemesh.testkit.mesh import nats_client

from .conftest import Mesh
from .test_outbound_call import demo_script

pytestmark = pytest.mark.slow

LIBRARY = ProfileLibrary()
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


@dataclass(frozen=True)
class Expected:
    """What the vertical's demo script must leave behind."""

    vertical: str
    goal_tool: str  # the tool whose success is the call's purpose
    phone: str  # the number the backend vouches for (not the one its demo script speaks)
    day: str | None = None  # "tomorrow" or a weekday the caller named
    hour: int | None = None  # the local hour the caller named
    name: str | None = None  # the caller's first name, as the booking holds it
    text_purpose: str = "confirmation"  # the text the call ends with

    @property
    def tenant(self) -> str:
        return "demo-" + self.vertical.replace("_", "-")


VERTICALS = [
    Expected("healthcare", "calendar.book", "+15550100101", day="monday", hour=10, name="mary"),
    Expected(
        "behavioral_health", "calendar.book", "+15550100102", day="thursday", hour=16, name="alex"
    ),
    Expected("legal", "calendar.book", "+15550100103", day="friday", hour=11, name="sarah"),
    Expected("real_estate", "calendar.book", "+15550100104", day="tomorrow", hour=17, name="lisa"),
    Expected("insurance", "crm.file_claim", "+15550100105", text_purpose="claim"),
]


@dataclass(frozen=True)
class Reply:
    text: str  # what the agent's transcript says it said
    audio: bytes  # what the phone heard meanwhile, as 16 kHz PCM


@dataclass
class Outcome:
    expected: Expected
    call_id: str
    watcher: CallWatcher
    said: int
    greeting_audio: bytes  # what the phone heard first, as 16 kHz PCM
    replies: list[Reply]
    days: LocalDays  # the dates the call ran across ("tomorrow" is by the agent's clock)


_DIGITS = {"zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


def vouched_script(vertical: str) -> list[Line]:
    """The demo script of a call whose number the backend vouched for: the agent never asks
    for that number, so the line that says it goes, and the line before it expects what the
    agent says next (the number's line's ``expect``)."""
    script: list[Line] = []
    for line in demo_script(vertical):
        words = line.say.split()
        if script and len(words) == 10 and set(words) <= _DIGITS:
            script[-1] = Line(script[-1].say, line.expect)
        else:
            script.append(line)
    return script


async def _texts(http: httpx.AsyncClient, mesh: Mesh, want: Expected) -> dict[str, str]:
    """The tenant's texts with the purpose this vertical's call ends with: id → recipient."""
    response = await http.get(
        f"{mesh.url('sms')}/v1/{want.tenant}/messages",
        params={"limit": 500},
        headers=mesh.auth(want.tenant),
    )
    assert response.status_code == 200, response.text
    return {m["id"]: m["to"] for m in response.json() if m["purpose"] == want.text_purpose}


async def _call(http: httpx.AsyncClient, nc: NatsClient, mesh: Mesh, want: Expected) -> Outcome:
    created = await http.post(
        f"{mesh.url('gateway')}/v1/{want.tenant}/calls",
        headers=mesh.auth(want.tenant),
        json={"phone": want.phone},
    )
    assert created.status_code == 201, created.text
    days = LocalDays()
    body = created.json()
    watcher = CallWatcher(nc, want.tenant, body["call_id"])
    await watcher.start()
    call = await dial(http, body["whip_url"], body["token"], connect_timeout_s=20, record=True)
    answered_at: list[float] = []  # when the phone began each of its lines
    try:
        said = await converse(
            call,
            watcher,
            vouched_script(want.vertical),
            reply_timeout_s=40,
            on_say=lambda _: answered_at.append(time.monotonic()),
        )
        await watcher.wait(watcher.ended, 20, f"{want.vertical}: CallEnded")
    finally:
        await call.hang_up()
        await call.close()
        await watcher.stop()
    # The greeting is what the phone heard before it first answered (it answers only after
    # hearing the greeting out).
    greeting = call.first_words(until=answered_at[0]) if answered_at else b""
    return Outcome(
        want, body["call_id"], watcher, said, greeting, _replies(call, watcher, answered_at), days
    )


def _replies(call: PhoneCall, watcher: CallWatcher, answered_at: list[float]) -> list[Reply]:
    """Each line the agent says it spoke (its transcript segment) with the audio the phone
    heard from then until the caller next spoke or the agent's next line began."""
    lines = watcher.lines(Speaker.AGENT)
    replies = []
    for n, line in enumerate(lines):
        ends = [a for a in answered_at if a > line.at]
        if n + 1 < len(lines):
            ends.append(lines[n + 1].at)
        end = min(ends, default=line.at + 30.0)
        replies.append(Reply(line.segment.text, call.audio_between(line.at - 0.3, end)))
    return replies


def _check_slot(start: datetime, zone: ZoneInfo, want: Expected, days: LocalDays) -> None:
    local = start.astimezone(zone)
    seen = days.seen(zone)
    assert (local.hour, local.minute) == (want.hour, 0), (want.vertical, local)
    assert seen[0] < local.date() <= seen[-1] + timedelta(days=14), (want.vertical, local)
    if want.day == "tomorrow":
        assert local.date() in days.tomorrows(zone), (want.vertical, local)
    else:
        assert WEEKDAYS[local.weekday()] == want.day, (want.vertical, local)


async def _check_outcome(
    http: httpx.AsyncClient, mesh: Mesh, outcome: Outcome, texts_before: dict[str, str]
) -> None:
    want, watcher = outcome.expected, outcome.watcher
    tenant, auth = want.tenant, mesh.auth(want.tenant)
    script = vouched_script(want.vertical)
    assert outcome.said >= len(script), (want.vertical, watcher.segments)
    ended = watcher.ended()
    assert ended is not None and ended.reason is EndReason.AGENT_HANGUP, (want.vertical, ended)
    assert [e.type for e in watcher.lifecycle].count("call.ended") == 1, want.vertical
    # What the agent said is what the phone heard: its greeting, recognised from the audio
    # that came through the gateway, is this vertical's.
    greetings = [LIBRARY.get(p).greeting for p in LIBRARY.names()]
    heard = decode_agent_audio(outcome.greeting_audio, greetings)
    assert heard == LIBRARY.get(want.vertical).greeting, (want.vertical, heard)
    # And each of its lines: recognised against every line the agent spoke on this call, the
    # audio says the line the transcript says. One line the recogniser cannot place at all
    # is tolerated per call, however often the agent says it (pocketsphinx does not follow
    # eSpeak's insurance voice on "...policy number." even straight from the synthesiser);
    # a different line, never.
    spoken = sorted({r.text for r in outcome.replies})
    decoded = [decode_agent_audio(r.audio, spoken) for r in outcome.replies]
    wrong = [
        (r.text, d) for r, d in zip(outcome.replies, decoded, strict=True) if d and d != r.text
    ]
    unplaced = {r.text for r, d in zip(outcome.replies, decoded, strict=True) if not d}
    assert not wrong, (want.vertical, wrong)
    assert len(unplaced) <= 1 and len(outcome.replies) >= len(script), (want.vertical, unplaced)
    ok_tools = {f"{t.service}.{t.name}" for t in watcher.tools if t.ok}
    assert {want.goal_tool, "sms.send"} <= ok_tools, (want.vertical, ok_tools)

    if want.goal_tool == "calendar.book":
        hours = (await http.get(f"{mesh.url('calendar')}/v1/{tenant}/hours", headers=auth)).json()
        zone = ZoneInfo(hours["time_zone"])
        first = outcome.days.first(zone)
        listed = await http.get(
            f"{mesh.url('calendar')}/v1/{tenant}/appointments",
            params={"day": (first + timedelta(days=1)).isoformat(), "days": 15},
            headers=auth,
        )
        assert listed.status_code == 200, listed.text
        assert want.name is not None
        ours = [
            a
            for a in listed.json()["appointments"]
            if a["status"] == "booked" and a["name"].lower().startswith(want.name)
        ]
        assert len(ours) == 1, (want.vertical, listed.json())
        _check_slot(datetime.fromisoformat(ours[0]["start"]), zone, want, outcome.days)

    async def confirmation() -> list[str]:
        texts = await _texts(http, mesh, want)
        return [to for text_id, to in texts.items() if text_id not in texts_before]

    # The call's number is the one its backend vouched for: the text goes there and nowhere
    # else, whatever number the caller spoke.
    sent_to = await wait_until(confirmation, 20, what=f"{want.vertical}: the confirmation text")
    assert set(sent_to) == {want.phone}, (want.vertical, sent_to)

    async def transcript() -> bool:
        response = await http.get(
            f"{mesh.url('transcript')}/v1/{tenant}/calls/{outcome.call_id}/transcript",
            headers=auth,
        )
        if response.status_code != 200:
            return False
        segments = response.json()["segments"]
        agent = [s for s in segments if s["speaker"] == Speaker.AGENT]
        caller = [s for s in segments if s["speaker"] == Speaker.CALLER]
        return len(agent) == len(watcher.lines(Speaker.AGENT)) and len(caller) == len(
            watcher.lines(Speaker.CALLER)
        )

    await wait_until(transcript, 20, what=f"{want.vertical}: the stored transcript")

    recorded: set[str] = set()

    async def audited() -> bool:
        response = await http.get(
            f"{mesh.url('audit')}/v1/{tenant}/calls/{outcome.call_id}/audit", headers=auth
        )
        recorded.update(r["type"] for r in response.json()["records"])
        return {"call.connected", "call.ended", "tool.event"} <= recorded

    try:
        await wait_until(audited, 20, what=f"{want.vertical}: the call's audit records")
    except TimeoutError:
        pytest.fail(
            f"{want.vertical}: the audit holds only {sorted(recorded)} for the call\n"
            + mesh.log_tail(60, "audit")
        )


async def test_each_vertical_books_through_the_gateway(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=15) as http:
        before = {want.vertical: await _texts(http, mesh, want) for want in VERTICALS}
        nc = await nats_client(mesh.nats_url)
        try:
            outcomes = await asyncio.gather(*(_call(http, nc, mesh, want) for want in VERTICALS))
        finally:
            await nc.drain()
        for outcome in outcomes:
            await _check_outcome(http, mesh, outcome, before[outcome.expected.vertical])

    await mesh.verify_audit_chain()
