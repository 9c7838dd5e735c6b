"""Fixtures for the gateway tests: an in-process gateway on real NATS and Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from voicemesh.common import MeshService, decode_event
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.runtime.auth import ApiKeys
from voicemesh.gateway import GatewaySettings, create_app
from voicemesh.gateway.app import Gateway
from voicemesh.testkit.whip import EchoAgent

SECRET = "test-call-token-secret-0123456789abcdef"
API_KEY = "key-for-demo-salon-0123456789"
TENANT = "demo-salon"
#: The ops bearer token (``VOICEMESH_METRICS_TOKEN``): /metrics and /v1/gateway/load.
OPS_TOKEN = "ops-token-for-the-gateway-0123456789"


@dataclass
class Lifecycle:
    """Every lifecycle event the gateway published, in order (core NATS subscription)."""

    events: list[Any] = field(default_factory=list)

    async def on(self, msg: Msg) -> None:
        self.events.append(decode_event(msg.data))

    def types(self, call_id: str) -> list[str]:
        return [e.type for e in self.events if e.call_id == call_id]

    def ended(self, call_id: str) -> list[Any]:
        return [e for e in self.events if e.call_id == call_id and e.type == "call.ended"]


@dataclass
class GatewayHarness:
    service: MeshService
    gw: Gateway
    http: httpx.AsyncClient
    nats: NatsClient
    lifecycle: Lifecycle
    agent: EchoAgent


@pytest.fixture
def gateway_settings(nats_url: str, redis_url: str) -> Callable[..., GatewaySettings]:
    def make(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "nats_urls": [nats_url],
            "redis_url": redis_url,
            "call_token_secret": SECRET,
            "worker_url": "http://gateway.test",
            "turn_secret": "turn-shared-secret",
            "turn_urls": [
                "turn:turn.example.com:3478?transport=udp",
                "turns:turn.example.com:443?transport=tcp",
            ],
            "media_timeout_s": 5.0,
            "metrics_token": OPS_TOKEN,
            **overrides,
        }
        return GatewaySettings(**values)

    return make


@pytest.fixture
async def start_gateway(
    nats: NatsClient, gateway_settings: Callable[..., GatewaySettings]
) -> AsyncIterator[Callable[..., Any]]:
    await streams.apply(nats.jetstream())
    stack = contextlib.AsyncExitStack()

    async def start(**overrides: Any) -> GatewayHarness:
        service = create_app(
            gateway_settings(**overrides), api_keys=ApiKeys.parse(f"{TENANT}:{API_KEY}")
        )
        await stack.enter_async_context(LifespanManager(service.http, shutdown_timeout=30))
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=service.http), base_url="http://gateway.test"
            )
        )
        lifecycle = Lifecycle()
        sub = await nats.subscribe(subjects.call_lifecycle("*", "*"), cb=lifecycle.on)
        stack.push_async_callback(sub.unsubscribe)
        agent = EchoAgent(nats, TENANT)
        await agent.start()
        stack.push_async_callback(agent.stop)
        gw = service.get(Gateway)
        return GatewayHarness(service, gw, http, nats, lifecycle, agent)

    try:
        yield start
    finally:
        await stack.aclose()
