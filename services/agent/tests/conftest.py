"""What the agent's tests share: the agent service, on an OpenAI provider, in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from voicemesh.agent import AgentService, AgentSettings, create_app

OpenAiAgents = Callable[..., Awaitable[AgentService]]


@pytest.fixture
async def openai_agents() -> AsyncIterator[OpenAiAgents]:
    """Starts agents on an OpenAI-compatible server (the simulator); stops them after the
    test. ``start(provider, nats_url=, base_url=, api_key=, profiles=, tenant=, profile=)``:
    ``tenant`` is served with the profile ``profile`` found in the directory ``profiles``."""
    started: list[AgentService] = []

    async def start(
        provider: str,
        *,
        nats_url: str,
        base_url: str,
        api_key: str,
        profiles: Path,
        tenant: str,
        profile: str,
    ) -> AgentService:
        settings = AgentSettings(
            nats_urls=[nats_url],
            agent_provider=provider,
            openai_api_key=api_key,
            openai_base_url=base_url,
            agent_profile_dirs=[profiles],
            agent_profiles=f"{tenant}:{profile}",
            agent_provider_timeout_s=4.0,
        )
        service = create_app(settings)
        await service.start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            await service.stop()
