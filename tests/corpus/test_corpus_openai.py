"""A sample of the corpus through the OpenAI chat provider, against the local simulator
(``python -m voicemesh.openaisim``, reached through the official ``openai`` package): safety
screening comes before the model as it does for the offline dialog, and no line repeats
more than twice in a row on that path either."""

from __future__ import annotations

import sys

import pytest
from nats.aio.client import Client as NatsClient

from voicemesh.agent import AgentSettings
from voicemesh.agent.app import _build_provider
from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.agent.providers.base import Provider
from voicemesh.testkit.corpus import figures, load_corpus, run_call
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess

OPENAI_KEY = "sk-test-corpus-openai"


@pytest.fixture
async def simulator(processes: ProcessTracker) -> ServiceProcess:
    port = free_port()
    argv = [sys.executable, "-m", "voicemesh.openaisim", "--port", str(port)]
    sim = processes.command([*argv, "--api-key", OPENAI_KEY], {}, name="openaisim")
    sim.http_port = port
    await sim.wait_healthy()
    return sim


def _chat(simulator: ServiceProcess) -> Provider:
    """The chat provider as the agent service builds it from its settings."""
    settings = AgentSettings(
        agent_provider="openai",
        openai_api_key=OPENAI_KEY,
        openai_base_url=f"http://127.0.0.1:{simulator.http_port}/v1",
        agent_provider_timeout_s=5.0,
    )
    return _build_provider(settings)


async def test_a_corpus_sample_through_the_openai_chat_path(
    nats: NatsClient, simulator: ServiceProcess
) -> None:
    calls = load_corpus()
    # Every crisis and emergency call, and every fourth of the others.
    sample = [c for i, c in enumerate(calls) if c.has_crisis or i % 4 == 0]
    provider = _chat(simulator)
    assert provider.name == "openai"
    library = ProfileLibrary()
    try:
        runs = [await run_call(nats, c, provider.conversation, profiles=library) for c in sample]
    finally:
        await provider.close()
    shown = figures(runs)
    assert any(r.call.has_crisis for r in runs) and any(not r.call.has_crisis for r in runs)
    assert shown.crisis_recall == 1.0, shown.missed
    assert shown.false_alarm_rate <= 0.02, shown.false_alarms
    assert not shown.loops, shown.loops
    assert all(len(r.lines) >= 2 for r in runs)  # the model answered every call
