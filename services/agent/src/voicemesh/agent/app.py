"""The agent service: starts a conversation on ``CallConnected``, stops it on ``CallEnded``.

Lifecycle events arrive on the durable consumer ``agent-calls``; media never goes through
FastStream: each call's ``CallSession`` talks through a ``NatsCallIO`` on the media and
tool connection opened at startup (by the runtime's ``connect``, like every connection).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient

from voicemesh.agent.io import NatsCallIO
from voicemesh.agent.profiles import Profile, ProfileError, ProfileLibrary
from voicemesh.agent.providers.base import CallContext, CallTools, Provider, WarmsUp
from voicemesh.agent.providers.offline import EspeakSynthesizer, OfflineProvider
from voicemesh.agent.session import CallSession
from voicemesh.agent.settings import AgentSettings
from voicemesh.common import MeshService, subscribe_durable
from voicemesh.common.contracts.events import CallConnected, CallEnded, LifecycleEvent
from voicemesh.common.contracts.streams import consumer
from voicemesh.common.runtime.connection import connect
from voicemesh.common.runtime.tools import ToolClient

__all__ = ["AgentRuntime", "AgentService", "create_app"]

log = logging.getLogger(__name__)


def _build_provider(settings: AgentSettings) -> Provider:
    if settings.agent_provider == "offline" or settings.openai_api_key is None:
        return OfflineProvider(sample_rate=settings.agent_sample_rate)
    # Imported here: the offline default never loads the openai package.
    from voicemesh.agent.providers.openai_chat import OpenAIOptions, OpenAIProvider
    from voicemesh.agent.providers.openai_realtime import OpenAIRealtimeProvider

    options = OpenAIOptions(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        chat_model=settings.openai_chat_model,
        realtime_model=settings.openai_realtime_model,
        transcribe_model=settings.openai_transcribe_model,
        speech_model=settings.openai_speech_model,
        voice=settings.openai_voice,
        timeout_s=settings.agent_provider_timeout_s,
    )
    if settings.agent_provider == "openai-realtime":
        return OpenAIRealtimeProvider(options)
    return OpenAIProvider(options)


class AgentRuntime:
    """What the running service holds: the media connection, the provider, live calls."""

    def __init__(
        self,
        service: MeshService,
        settings: AgentSettings,
        provider: Provider | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.profiles = ProfileLibrary(settings.agent_profile_dirs)
        self.provider = provider or _build_provider(settings)
        self.now = now or (lambda: datetime.now(UTC))
        self.sessions: dict[str, CallSession] = {}
        self.nc: NatsClient | None = None
        self.tools: ToolClient | None = None

    async def open(self) -> None:
        self.nc = await connect(
            self.settings,
            name="voicemesh-agent-media",
            # Audio sent while this connection is down is lost: after a NATS restart, be
            # back within a fraction of a second, as the gateway is (tests/chaos).
            reconnect_time_wait=0.2,
        )
        self.tools = ToolClient(self.nc, source="agent", tracer=self.service.telemetry.tracer)
        if isinstance(self.provider, WarmsUp):
            # Before the broker starts: the first calls find their recogniser loaded.
            await self.provider.warm(self.served_profiles())

    def served_profiles(self) -> list[Profile]:
        """The profile of every tenant this agent serves (each once), in tenant order."""
        chosen: dict[str, Profile] = {}
        for tenant in self.service.tenants:
            profile = self._profile(tenant.id, tenant.vertical.value)
            if profile is None:
                log.error("no profile for tenant %s", tenant.id)
            else:
                chosen.setdefault(profile.name, profile)
        return list(chosen.values())

    def _profile(self, tenant: str, vertical: str) -> Profile | None:
        """The tenant's profile (``AGENT_PROFILES`` names it, else its vertical's)."""
        try:
            return self.profiles.get(self.settings.profile_for(tenant, vertical))
        except ProfileError:
            return None

    async def close(self) -> None:
        for call_id in list(self.sessions):
            await self.end(call_id)
        await self.provider.close()
        if self.nc is not None:
            await self.nc.drain()
            self.nc = None

    async def begin(self, event: CallConnected) -> None:
        if event.call_id in self.sessions:
            return  # a redelivered CallConnected: the conversation is already running
        tenant = self.service.tenants.get(event.tenant)
        if tenant is None:
            log.info("ignoring a call of a tenant this agent does not serve")
            return
        assert self.nc is not None and self.tools is not None
        profile = self._profile(tenant.id, event.vertical or tenant.vertical.value)
        if profile is None:
            log.error("no profile for tenant %s; not answering the call", tenant.id)
            return
        context = CallContext(
            tenant=tenant,
            call_id=event.call_id,
            profile=profile,
            tools=CallTools(self.tools, tenant.id, event.call_id),
            now=self.now,
            phone=event.phone,
        )
        session = CallSession(
            io=NatsCallIO(self.nc, self.service.events, tenant.id, event.call_id),
            context=context,
            provider=self.provider,
            fallback=EspeakSynthesizer(profile, self.settings.agent_sample_rate),
            tracer=self.service.telemetry.tracer,
            on_finished=self.end,
            provider_timeout_s=self.settings.agent_provider_timeout_s,
        )
        self.sessions[event.call_id] = session
        await session.start()

    async def end(self, call_id: str) -> None:
        session = self.sessions.pop(call_id, None)
        if session is not None:
            await session.stop()


class AgentService(MeshService):
    """The agent's ``MeshService``, with its runtime (live calls, provider) attached."""

    runtime: AgentRuntime


def create_app(
    settings: AgentSettings,
    *,
    provider: Provider | None = None,
    now: Callable[[], datetime] | None = None,
) -> AgentService:
    service = AgentService(
        "agent", settings, description="Conversation engine: listens to a call and talks back."
    )
    runtime = AgentRuntime(service, settings, provider, now)
    service.runtime = runtime

    service.on_startup(runtime.open)
    service.on_shutdown(runtime.close)

    @subscribe_durable(service.broker, consumer("agent", "calls"), settings.tenant)
    async def on_lifecycle(event: LifecycleEvent) -> None:
        if isinstance(event, CallConnected):
            await runtime.begin(event)
        elif isinstance(event, CallEnded):
            await runtime.end(event.call_id)

    @service.http.get("/v1/profiles", tags=["agent"], summary="the vertical profiles loaded")
    async def profiles() -> dict[str, list[str]]:
        return {"profiles": runtime.profiles.names()}

    @service.http.get("/v1/calls", tags=["agent"], summary="calls with a live conversation")
    async def calls() -> dict[str, int]:
        return {"active": len(runtime.sessions)}

    return service
