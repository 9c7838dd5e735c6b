"""The sms service's test harness: the service on real NATS JetStream, Redis and SQLite, and a
local HTTP peer that answers like Twilio's Messages API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from voicemesh.common import MeshService, SmsJob
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import SmsStatus
from voicemesh.sms import SmsSettings, create_app
from voicemesh.testkit.fixtures import wait_until

API_KEY = "sms-test-key-0123456789abc"
PHONE = "+15555550123"


@dataclass
class Sms:
    service: MeshService
    tenant: str
    http: httpx.AsyncClient
    js: JetStreamContext
    nats: NatsClient
    statuses: list[SmsStatus] = field(default_factory=list)

    async def publish(self, key: str, to: str = PHONE, event_id: str | None = None) -> SmsJob:
        job = SmsJob(
            tenant=self.tenant, source="test", idempotency_key=key, to=to, body=f"hello {key}"
        )
        if event_id:
            job = job.model_copy(update={"event_id": event_id})
        await self.js.publish(
            subjects.sms_outbound(self.tenant),
            job.model_dump_json().encode(),
            headers={"Nats-Msg-Id": job.event_id},
        )
        return job

    async def status_of(self, key: str, status: str, timeout: float = 15) -> SmsStatus:
        result: SmsStatus = await wait_until(
            lambda: next(
                (s for s in self.statuses if s.idempotency_key == key and s.status == status), None
            ),
            timeout,
            what=f"{status} for {key}",
        )
        return result

    async def settled(self) -> None:
        async def idle() -> bool:
            info = await self.js.consumer_info("SMS", "sms-jobs")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await wait_until(idle, timeout=15, what="every job acked")

    async def messages(self) -> list[dict[str, Any]]:
        response = await self.http.get(f"/v1/{self.tenant}/messages")
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()
        return rows


StartSms = Callable[..., Awaitable[Sms]]


@pytest.fixture
async def start_sms(
    nats: NatsClient,
    nats_url: str,
    redis_url: str,
    sqlite_url: str,
    unique: Callable[[str], str],
) -> AsyncIterator[StartSms]:
    js = nats.jetstream()
    await streams.apply(js, services={"sms"})
    started: list[tuple[MeshService, httpx.AsyncClient]] = []
    subs = []

    async def start(tenant: str | None = None, **overrides: object) -> Sms:
        tenant = tenant or unique("t")
        settings = SmsSettings.model_validate(
            {
                "nats_urls": [nats_url],
                "redis_url": redis_url,
                "database_url": sqlite_url,
                "tenants": f"{tenant}:salon",
                "api_keys": f"{tenant}:{API_KEY}",
                **overrides,
            }
        )
        service = create_app(settings)
        await service.start()
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.http),
            base_url="http://sms",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        started.append((service, http))
        sms = Sms(service, tenant, http, js, nats)

        async def on_status(msg: Any) -> None:
            sms.statuses.append(SmsStatus.model_validate_json(msg.data))

        subs.append(await nats.subscribe(subjects.event(tenant, "sms"), cb=on_status))
        return sms

    yield start
    for sub in subs:
        await sub.unsubscribe()
    for service, http in reversed(started):
        await http.aclose()
        await service.stop()


@dataclass
class FakeTwilio:
    """A local HTTP server that answers like Twilio's Messages API, from a script."""

    script: list[tuple[int, dict[str, Any]]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    #: The ``Retry-After`` of a scripted 429 (and of a 503, if ``retry_after_on_503``):
    #: seconds, or an HTTP date.
    retry_after: int | str = 1
    retry_after_on_503: bool = False


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio(script=[])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(parse_qsl(self.rfile.read(length).decode()))
            with lock:
                fake.requests.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "form": form,
                        "at": time.monotonic(),
                    }
                )
                status, payload = fake.script.pop(0) if fake.script else (201, {})
            if status == 201:
                payload = {"sid": f"SM{len(fake.requests):032d}", "status": "queued", **payload}
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 429 or (status == 503 and fake.retry_after_on_503):
                self.send_header("Retry-After", str(fake.retry_after))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


TWILIO = {
    "provider": "twilio",
    "twilio_account_sid": "AC0123456789abcdef0123456789abcdef",
    "twilio_auth_token": "twilio-test-token-0123456789",
    "sender_id": "+15550001111",
    "public_url": "https://sms.example.test",
}


def twilio_signature(url: str, fields: list[tuple[str, str]] | dict[str, str]) -> str:
    """``X-Twilio-Signature`` as Twilio's security documentation describes it, written apart
    from the service: HMAC-SHA1, keyed with the auth token, of the full URL followed by every
    field's name and value, sorted by name (a repeated name's values sorted too)."""
    pairs = list(fields.items()) if isinstance(fields, dict) else fields
    data = url + "".join(name + value for name, value in sorted(pairs))
    token = str(TWILIO["twilio_auth_token"]).encode()
    return base64.b64encode(hmac.new(token, data.encode(), hashlib.sha1).digest()).decode()
