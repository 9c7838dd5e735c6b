"""The agent service loads its recognisers when it starts, not when a call comes."""

from __future__ import annotations

from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient

from voicemesh.agent import AgentSettings, create_app
from voicemesh.agent.providers.base import CallContext
from voicemesh.agent.providers.offline import OfflineProvider
from voicemesh.common.contracts import streams


async def test_recognisers_load_at_startup_not_when_a_call_comes(
    nats: NatsClient, nats_url: str
) -> None:
    # Loading a pocketsphinx decoder holds the GIL for a third of a second: mid-call, every
    # live call's audio would stall with it.
    settings = AgentSettings(nats_urls=[nats_url], tenants="t-law:legal,t-hair:salon,t-law2:legal")
    service = create_app(settings)
    provider = service.runtime.provider
    assert isinstance(provider, OfflineProvider)
    await streams.apply(nats.jetstream())
    await service.start()
    try:
        assert [p.name for p in service.runtime.served_profiles()] == ["legal", "salon"]
        pool = provider._pool
        assert pool.loaded == 2
        tenant = service.tenants.get("t-law2")
        assert tenant is not None
        context = CallContext(
            tenant=tenant,
            call_id="c-1",
            profile=service.runtime.profiles.get("legal"),
            tools=None,  # type: ignore[arg-type]  # a transcriber calls no tools
            now=lambda: datetime.now(UTC),
        )
        transcriber = provider.transcriber(context)
        await transcriber.open()
        assert pool.loaded == 2  # lent from the pool
        second = provider.transcriber(context)
        await second.open()
        assert pool.loaded == 3  # a second legal call at once loads another
        await transcriber.close()
        await second.close()
    finally:
        await service.stop()
