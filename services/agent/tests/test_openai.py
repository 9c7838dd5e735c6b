"""The OpenAI providers against the local OpenAI-compatible server, booking for real.

Everything is a real peer: ``python -m voicemesh.openaisim`` (HTTP and Realtime WebSocket,
reached through the official ``openai`` package), ``python -m voicemesh.calendar`` on the
test's nats-server with JetStream and SQLite, and a simulated gateway speaking eSpeak audio
over NATS. The booking is read back through the calendar's HTTP API.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from nats.aio.client import Client as NatsClient

from voicemesh.agent import AgentService, AgentSettings
from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.agent.providers.openai_chat import CUT_OFF
from voicemesh.common.contracts import streams
from voicemesh.common.contracts.events import HandoffReason
from voicemesh.testkit.agent import connected_call
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import LocalDays, ProcessTracker, ServiceProcess, wait_until

TENANT = "demo-salon"
NEW_YORK = ZoneInfo("America/New_York")
OPENAI_KEY = "sk-test-agent-openai"
CALENDAR_KEY = "calendar-key-for-the-openai-tests"
BOOKING = "i would like to book a haircut tomorrow at three p m for mary jones"
GREETING = "Bella Salon, how can I help?"
APOLOGY = "Sorry, a colleague will call you back. Goodbye."
HELLO = "hello are you there"
LONG_GREETING = (
    "Bella Salon, thank you for calling. We do haircuts, colour, blow dries and nails every "
    "day but Sunday, and I can book any of them for you right now. How can I help you today?"
)


@dataclass
class Mesh:
    nats: NatsClient
    nats_url: str
    sim: ServiceProcess
    profiles: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sim.http_port}/v1"

    async def sim_stats(self) -> dict[str, int]:
        async with httpx.AsyncClient() as http:
            stats: dict[str, int] = (
                await http.get(f"http://127.0.0.1:{self.sim.http_port}/sim/stats")
            ).json()
            return stats

    async def truncations(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{self.sim.http_port}/sim/truncations")
            cuts: list[dict[str, Any]] = response.json()["truncations"]
            return cuts

    async def last_chat(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{self.sim.http_port}/sim/last-chat")
            messages: list[dict[str, Any]] = response.json()["messages"]
            return messages


@pytest.fixture
async def mesh(
    request: pytest.FixtureRequest,
    nats: NatsClient,
    nats_url: str,
    processes: ProcessTracker,
    tmp_path: Path,
) -> Mesh:
    """NATS with the streams, the simulator, and a quick salon profile for the agent.

    Parametrised indirectly, the value is the simulator's ``--voice-speed``: 1.0 has the
    Realtime model produce its voice in real time, as a live model does."""
    await streams.apply(nats.jetstream())
    phrases = tmp_path / "phrases.txt"
    phrases.write_text(f"{BOOKING}\n{HELLO}\n")
    port = free_port()
    argv = [sys.executable, "-m", "voicemesh.openaisim", "--port", str(port)]
    speed = str(getattr(request, "param", 0.0))
    sim = processes.command(
        [*argv, "--api-key", OPENAI_KEY, "--phrases", str(phrases), "--voice-speed", speed],
        {},
        name="openaisim",
    )
    sim.http_port = port
    # A salon whose fixed lines are short, so the calls are quick.
    salon = ProfileLibrary().get("salon").model_dump(mode="json")
    salon.update(name="quick_salon", greeting=GREETING)
    salon["messages"]["apology"] = APOLOGY
    (tmp_path / "quick_salon.yaml").write_text(yaml.safe_dump(salon))
    salon.update(name="chatty_salon", greeting=LONG_GREETING)
    (tmp_path / "chatty_salon.yaml").write_text(yaml.safe_dump(salon))
    await sim.wait_healthy()
    return Mesh(nats, nats_url, sim, tmp_path)


@pytest.fixture
def calendar(nats_url: str, sqlite_url: str, processes: ProcessTracker) -> ServiceProcess:
    """The real calendar service on the test's nats-server, with SQLite; still starting (it
    comes up while the simulator does), so a test waits for it to be healthy."""
    process = processes.python_module(
        "voicemesh.calendar",
        {
            "VOICEMESH_NATS_URL": nats_url,
            "VOICEMESH_DATABASE_URL": sqlite_url,
            "VOICEMESH_API_KEYS": f"{TENANT}:{CALENDAR_KEY}",
            "VOICEMESH_REMINDER_POLL_S": "0",
        },
    )
    return process


async def appointments(calendar: ServiceProcess, day: date) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{calendar.http_port}/v1/{TENANT}/appointments"
    async with httpx.AsyncClient() as http:
        response = await http.get(
            url,
            params={"day": day.isoformat(), "days": 1},
            headers={"Authorization": f"Bearer {CALENDAR_KEY}"},
        )
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["appointments"]
    return rows


AgentFactory = Callable[..., Awaitable[AgentService]]


@pytest.fixture
def agent_for(mesh: Mesh, openai_agents: AgentFactory) -> AgentFactory:
    """Starts the agent in this process with the given provider; stops it after the test."""

    async def start(provider: str, profile: str = "quick_salon") -> AgentService:
        return await openai_agents(
            provider,
            nats_url=mesh.nats_url,
            base_url=mesh.base_url,
            api_key=OPENAI_KEY,
            profiles=mesh.profiles,
            tenant=TENANT,
            profile=profile,
        )

    return start


@pytest.fixture(params=["openai", "openai-realtime"])
def provider(request: pytest.FixtureRequest) -> str:
    """Every call test runs on both providers: Chat Completions and Realtime."""
    return str(request.param)


async def test_a_spoken_booking_lands_in_the_real_calendar(
    calendar: ServiceProcess, mesh: Mesh, agent_for: AgentFactory, provider: str
) -> None:
    await calendar.wait_healthy()
    agent: AgentService = await agent_for(provider)
    days = LocalDays()
    async with connected_call(mesh.nats, TENANT, f"call-{provider}", "salon") as caller:
        assert await caller.wait_for_agent_line(1, timeout=15) == GREETING
        spoke_at = await caller.say(BOOKING)
        # The agent's line is published once the model has produced it.
        await wait_until(lambda: len(caller.agent_lines()) >= 2, 20)
        await wait_until(lambda: caller.first_audio_after(spoke_at) is not None, 5)
        confirmation = caller.agent_lines()[1]
        # The appointment row exists, at 3 PM New York time tomorrow.
        tomorrows = days.tomorrows(NEW_YORK)
        rows = [row for day in tomorrows for row in await appointments(calendar, day)]
        assert len(rows) == 1, rows
        start = datetime.fromisoformat(rows[0]["start"]).astimezone(NEW_YORK)
        assert start.date() in tomorrows and (start.hour, start.minute) == (15, 0)
        # The agent said so.
        assert confirmation.startswith("You're all set for ")
        assert f"{start:%A, %B} {start.day} at 3 PM" in confirmation
        # The caller's words came back from the provider's transcription.
        assert caller.caller_lines() == [BOOKING]
        assert rows[0]["name"] == "Mary Jones" and rows[0]["status"] == "booked"
        # The agent's audio is the provider's voice (24 kHz), and both paths were used.
        assert {a.sample_rate for a in caller.audio} == {24000}
        stats = await mesh.sim_stats()
        if provider == "openai":
            # The greeting, then the confirmation's two sentences voiced one by one.
            assert stats["chat"] == 2 and stats["transcriptions"] == 1 and stats["speech"] == 3
        else:
            assert stats["realtime"] == 1 and stats["realtime:response.create"] == 3
            assert stats["realtime:conversation.item.create"] == 1  # the function output
        assert agent.runtime.sessions[f"call-{provider}"] is not None


async def test_a_dropped_provider_gives_an_apology_and_a_handoff(
    mesh: Mesh, agent_for: AgentFactory, provider: str
) -> None:
    agent: AgentService = await agent_for(provider)
    async with connected_call(mesh.nats, TENANT, f"drop-{provider}", "salon") as caller:
        assert await caller.wait_for_agent_line(1, timeout=15) == GREETING
        mesh.sim.kill()  # the provider goes away mid-call
        spoke_at = await caller.say(HELLO)
        assert await caller.wait_for_agent_line(2, timeout=15) == APOLOGY
        await wait_until(lambda: caller.handoffs, 5)
        assert caller.handoffs[0].reason is HandoffReason.PROVIDER_FAILURE
        # Spoken in the offline voice (16 kHz), not silence; then the agent hangs up.
        assert any(a.received_at > spoke_at and a.sample_rate == 16000 for a in caller.audio)
        await wait_until(caller.hung_up, 10)
        await wait_until(lambda: not agent.runtime.sessions, 5)


async def test_speaking_over_the_agent_leaves_only_what_was_heard_in_the_history(
    mesh: Mesh, agent_for: AgentFactory, provider: str
) -> None:
    agent: AgentService = await agent_for(provider, profile="chatty_salon")
    async with connected_call(mesh.nats, TENANT, f"cut-{provider}", "salon") as caller:
        await wait_until(lambda: len(caller.audio) > 50, 15, what="a second of the greeting")
        await caller.say(HELLO)  # over the agent's greeting
        await wait_until(caller.interrupted, 5)
        await caller.wait_for_agent_line(2, timeout=20)
        if provider == "openai":
            # The model's next request: the greeting as far as the caller heard it, marked.
            said = [m["content"] for m in await mesh.last_chat() if m["role"] == "assistant"]
            assert said[0].endswith(CUT_OFF), said
            heard = said[0].removesuffix(CUT_OFF)
        else:
            # The greeting's conversation item, truncated at what was played of its audio.
            cuts = await mesh.truncations()
            assert len(cuts) == 1, cuts
            assert 500 <= cuts[0]["audio_end_ms"] <= 5000, cuts
            heard = cuts[0]["text"]
        assert heard and LONG_GREETING.startswith(heard), heard
        assert len(heard) < len(LONG_GREETING) / 2, heard
        assert agent.runtime.sessions[f"cut-{provider}"].interrupts == 1


@pytest.mark.parametrize("mesh", [1.0], indirect=True)  # voices take as long as they last
async def test_a_reply_plays_while_the_model_is_still_producing_it(
    mesh: Mesh, agent_for: AgentFactory, provider: str
) -> None:
    await agent_for(provider)
    async with connected_call(mesh.nats, TENANT, f"live-{provider}", "salon") as caller:
        assert await caller.wait_for_agent_line(1, timeout=15) == GREETING
        spoke_at = await caller.say(HELLO)
        reply = await caller.wait_for_agent_line(2, timeout=20)
        assert reply == f"I heard: {HELLO}. How can I help you today?"
        first = caller.first_audio_after(spoke_at)
        assert first is not None
        voice_s = sum(
            len(a.pcm) / 2 / a.sample_rate for a in caller.audio if a.received_at > spoke_at
        )
        assert voice_s > 2.5, voice_s
        stats = await mesh.sim_stats()
        if provider == "openai-realtime":
            # The model speaks in real time: the caller heard it begin long before it was done.
            assert first - spoke_at < 1.5, first - spoke_at
            assert (
                stats["realtime:response.create"] == 2 and "realtime:response.cancel" not in stats
            )
        else:
            # Each sentence is voiced as it is written: the first plays before the second
            # has been synthesized. Whole, its synthesis alone would take voice_s.
            assert first - spoke_at < voice_s, (first - spoke_at, voice_s)
            assert stats["chat"] == 1 and stats["speech"] == 3  # the greeting, two sentences
        # And the reply came through without a break.
        arrivals = [a.received_at for a in caller.audio if a.received_at >= first]
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert max(gaps) < 0.25, max(gaps)
        # While it played, the line was captioned live under its final segment's id.
        final = next(seg for seg in caller.segments if seg.text == reply)
        live = [(at, seg.text) for at, seg in caller.captions if seg.segment_id == final.segment_id]
        assert live and all(reply.startswith(text.rstrip(".")) for _, text in live), live
        assert live[0][0] < first + voice_s - 0.5, (live[0][0] - first, voice_s)


@pytest.mark.slow  # barge-in timing on a voice at real speed: the serial phase
@pytest.mark.parametrize("mesh", [1.0], indirect=True)
async def test_speaking_over_a_streaming_reply_stops_it_and_keeps_only_what_was_heard(
    mesh: Mesh, agent_for: AgentFactory, provider: str
) -> None:
    agent: AgentService = await agent_for(provider)
    first_sentence = f"I heard: {HELLO}."
    async with connected_call(mesh.nats, TENANT, f"live-cut-{provider}", "salon") as caller:
        assert await caller.wait_for_agent_line(1, timeout=15) == GREETING
        spoke_at = await caller.say(HELLO)
        await wait_until(lambda: caller.first_audio_after(spoke_at), 10, what="the reply")
        await asyncio.sleep(1.0)  # a second into "I heard: hello are you there. How can..."
        await caller.say(HELLO)  # over it
        await wait_until(caller.interrupted, 5)
        await caller.wait_for_agent_line(3, timeout=20)
        stats = await mesh.sim_stats()
        if provider == "openai-realtime":
            # The model stopped speaking, and what it had not said is gone from its history.
            assert stats.get("realtime:response.cancel") == 1, stats
            cuts = await mesh.truncations()
            assert len(cuts) == 1, cuts
            assert 300 <= cuts[0]["audio_end_ms"] <= 2500, cuts
            heard = cuts[0]["text"]
        else:
            # The next request's history: the cut reply as far as the caller heard it.
            said = [m["content"] for m in await mesh.last_chat() if m["role"] == "assistant"]
            assert said[0] == GREETING and said[1].endswith(CUT_OFF), said
            heard = said[1].removesuffix(CUT_OFF)
        assert heard and first_sentence.startswith(heard), heard
        assert len(heard) < len(first_sentence), heard
        # The transcript has what was produced of the cut reply, then the next answer.
        cut_line, next_line = caller.agent_lines()[1:3]
        assert cut_line.startswith(heard), cut_line
        assert next_line.startswith("I heard"), next_line
        assert agent.runtime.sessions[f"live-cut-{provider}"].interrupts == 1


def test_the_openai_providers_need_a_key_and_offer_the_profiles_tools() -> None:
    with pytest.raises(ValueError, match="VOICEMESH_OPENAI_API_KEY"):
        AgentSettings(agent_provider="openai")
    settings = AgentSettings(agent_provider="openai-realtime", openai_api_key="sk-x")
    assert settings.openai_api_key is not None
    assert "sk-x" not in repr(settings)  # the key is a secret, never printed


async def test_the_toolbox_offers_the_profiles_tools_without_the_idempotency_key() -> None:
    from voicemesh.agent.providers.base import CallContext, CallTools
    from voicemesh.agent.providers.openai_tools import ToolBox
    from voicemesh.common.contracts.tenancy import Tenant, Vertical
    from voicemesh.common.runtime.tools import ToolClient

    profile = ProfileLibrary().get("salon")
    tenant = Tenant(id=TENANT, vertical=Vertical.SALON)
    tools = CallTools(ToolClient(None, source="test"), TENANT, "c1")  # type: ignore[arg-type]
    now = datetime(2026, 11, 24, 15, 0, tzinfo=ZoneInfo("UTC"))
    box = ToolBox(CallContext(tenant, "c1", profile, tools, lambda: now))
    functions = {f["name"]: f for f in box.functions()}
    assert set(functions) == {"calendar_book", "sms_send", "end_call"}
    book = functions["calendar_book"]["parameters"]
    assert "idempotency_key" not in book["properties"] and "start" in book["required"]
    # A text's recipient and free words are the service's to decide: never offered.
    text = functions["sms_send"]["parameters"]
    assert {"to", "body", "idempotency_key"}.isdisjoint(text["properties"]), text
    assert "template" in text["properties"] and "start" in text["properties"]
    assert "2026-11-24T10:00:00-05:00 (America/New_York)" in box.instructions()
    bad = await box.execute("calendar_book", "not json")
    assert '"code": "invalid"' in bad.output and not box.used
    farewell = await box.execute("end_call", '{"farewell": "Bye now."}')
    assert farewell.hangup and farewell.farewell == "Bye now."
