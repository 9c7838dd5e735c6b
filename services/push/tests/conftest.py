"""Fixtures for the push service tests: a real APNs simulator and the service in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from voicemesh.apnssim.behaviours import Behaviour, token_for
from voicemesh.apnssim.certs import ProviderKeyPair, make_provider_key
from voicemesh.apnssim.server import ApnsSimulator, ProviderKey
from voicemesh.common import MeshService, decode_event
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import AnyEvent
from voicemesh.common.runtime.auth import ApiKeys
from voicemesh.push import PushSettings, create_app
from voicemesh.testkit.apns import write_credentials

SECRET = "s" * 40
BUNDLE = "com.example.voicemesh"


@dataclass
class PushHarness:
    service: MeshService
    sim: ApnsSimulator
    http: httpx.AsyncClient
    tenants: list[str]
    keys: dict[str, ProviderKeyPair]
    api_keys: dict[str, str]
    events: list[AnyEvent]

    async def register(
        self, tenant: str, user: str, token: str, *, env: str = "production"
    ) -> httpx.Response:
        return await self.http.post(
            f"/v1/{tenant}/devices",
            json={"user_id": user, "token": token, "bundle_id": BUNDLE, "environment": env},
            headers={"Authorization": f"Bearer {self.api_keys[tenant]}"},
        )

    async def phone(
        self, user: str, behaviour: Behaviour = Behaviour.OK, *, tenant: str | None = None
    ) -> tuple[str, str]:
        """Register a phone of ``user`` (of the first tenant unless ``tenant``) whose APNs
        answers as ``behaviour``: (tenant, token)."""
        tenant = tenant or self.tenants[0]
        token = token_for(behaviour)
        response = await self.register(tenant, user, token)
        assert response.status_code == 201, response.text
        return tenant, token

    def of_type(self, kind: str, call_id: str | None = None) -> list[AnyEvent]:
        return [
            e for e in self.events if e.type == kind and (call_id is None or e.call_id == call_id)
        ]


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[ApnsSimulator]:
    async with ApnsSimulator.with_own_tls(tmp_path / "tls", slow_s=0.5) as simulator:
        yield simulator


@pytest.fixture
async def make_push(
    sim: ApnsSimulator,
    nats: NatsClient,
    nats_url: str,
    redis_url: str,
    sqlite_url: str,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[PushHarness]]]:
    """``await make_push(tenants=2, **settings)`` → a running ``PushHarness``."""
    started: list[PushHarness] = []

    async def make(tenants: int = 1, **overrides: object) -> PushHarness:
        await streams.apply(nats.jetstream(), services=set())
        names = [unique("t") for _ in range(tenants)]
        keys = {t: make_provider_key() for t in names}
        creds_dir = tmp_path / "apns"
        for tenant, key in keys.items():
            sim.add_key(ProviderKey(key.key_id, key.team_id, key.public_pem, frozenset({BUNDLE})))
            write_credentials(creds_dir, tenant, key, BUNDLE)
        api_keys = {t: f"key-{t}-0123456789abcdef" for t in names}
        settings = PushSettings.model_validate(
            {
                "nats_urls": [nats_url],
                "redis_url": redis_url,
                "database_url": sqlite_url,
                "tenants": ",".join(f"{t}:salon" for t in names),
                "apns_host": "localhost",
                "apns_port": sim.port,
                "apns_ca_file": str(sim.ca_path),
                "apns_credentials_dir": creds_dir,
                "call_token_secret": SECRET,
                "gateway_public_url": "https://gw.example.test",
                **overrides,
            }
        )
        service = create_app(settings, api_keys=ApiKeys(list(api_keys.items())))
        events: list[AnyEvent] = []

        async def collect(msg: Msg) -> None:
            events.append(decode_event(msg.data))

        for tenant in names:
            await nats.subscribe(subjects.call_lifecycle(tenant, "*"), cb=collect)
            await nats.subscribe(subjects.sms_outbound(tenant), cb=collect)
        await service.start()
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.http), base_url="http://push.test"
        )
        harness = PushHarness(service, sim, http, names, keys, api_keys, events)
        started.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in started:
            await harness.http.aclose()
            await harness.service.stop()
