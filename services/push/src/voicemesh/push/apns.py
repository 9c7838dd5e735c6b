"""APNs through aioapns, one client per tenant and environment, with what aioapns lacks.

aioapns 4.0 has no base-URL option, no per-request timeout and leaves a timed-out
request's stream open; ``TenantApns`` adds each of these at this one boundary:

* the host, port and CA bundle come from settings (``VOICEMESH_APNS_*``): the protocol class
  is subclassed with them, so a simulator can stand in for Apple;
* every request has its own timeout; on timeout the stream is reset and forgotten, so the
  connection and its other requests carry on;
* ``renew_provider_token`` reconnects with freshly signed JWTs after ExpiredProviderToken.

Each tenant has its own clients and connections, so one tenant's slow or failing APNs
traffic never queues behind another's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import APNsTLSClientProtocol
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from h2.exceptions import ProtocolError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from voicemesh.common.contracts.errors import InvalidMessage
from voicemesh.push.settings import PushSettings

__all__ = [
    "APPLE_HOSTS",
    "ApnsCredentials",
    "ApnsPool",
    "PushResult",
    "TenantApns",
    "load_credentials",
]

log = logging.getLogger(__name__)

APPLE_HOSTS = {
    "production": "api.push.apple.com",
    "sandbox": "api.sandbox.push.apple.com",
}
#: Keep connections open across quiet minutes: a cold connection adds a TLS and HTTP/2
#: handshake (and a JWT signature) to the time it takes a phone to ring.
INACTIVITY_S = 600


class ApnsCredentials(BaseModel):
    """One tenant's APNs credentials: a ``.p8`` token key, or a client certificate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str | None = Field(default=None, pattern=r"^[A-Z0-9]{10}$")
    team_id: str | None = Field(default=None, pattern=r"^[A-Z0-9]{10}$")
    key: SecretStr | None = None
    key_file: Path | None = None
    cert_file: Path | None = None
    bundle_id: str = Field(min_length=1, max_length=255)

    @model_validator(mode="after")
    def _one_kind(self) -> ApnsCredentials:
        token = self.key is not None or self.key_file is not None
        if token == (self.cert_file is not None):
            raise ValueError("give either a .p8 key (key or key_file) or cert_file")
        if token and not (self.key_id and self.team_id):
            raise ValueError("a .p8 key needs key_id and team_id")
        return self

    def key_pem(self) -> str | None:
        if self.key is not None:
            return self.key.get_secret_value()
        if self.key_file is not None:
            return self.key_file.read_text()
        return None


def load_credentials(directory: Path | None, inline: str | None) -> dict[str, ApnsCredentials]:
    """Per-tenant credentials from ``<dir>/<tenant>.json`` files and/or an inline JSON map.

    Relative ``key_file``/``cert_file`` paths are relative to the directory.
    """
    raw: dict[str, dict[str, Any]] = {}
    if directory is not None and directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            entry = json.loads(path.read_text())
            for field in ("key_file", "cert_file"):
                if entry.get(field) and not Path(entry[field]).is_absolute():
                    entry[field] = str(directory / entry[field])
            raw[path.stem] = entry
    if inline:
        raw.update(json.loads(inline))
    loaded: dict[str, ApnsCredentials] = {}
    for tenant, entry in raw.items():
        try:
            loaded[tenant] = ApnsCredentials.model_validate(entry)
        except ValidationError as exc:
            # Name the tenant and the field, never the value: it may be the key itself.
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            raise ValueError(
                f"APNs credentials of tenant {tenant!r} are invalid: {fields}"
            ) from exc
    return loaded


@dataclass(frozen=True)
class PushResult:
    """What APNs answered; ``status`` 0 means no answer (timeout or connection failure)."""

    status: int
    reason: str | None = None
    timestamp_ms: int | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200


class _VoipProtocol(APNsTLSClientProtocol):
    """aioapns's protocol, pointed at a configurable host and safe to time out on."""

    INACTIVITY_TIME = INACTIVITY_S

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        try:
            result: NotificationResult = await super().send_notification(request)
            return result
        except asyncio.CancelledError:
            self._forget(request.notification_id)
            raise

    def _forget(self, notification_id: str) -> None:
        # A request we stopped waiting for: reset its stream so the server may drop it and
        # give its slot back, instead of leaving a cancelled future for connection_lost.
        self.requests.pop(notification_id, None)
        self.request_statuses.pop(notification_id, None)
        for stream_id, nid in list(self.request_streams.items()):
            if nid == notification_id:
                del self.request_streams[stream_id]
                try:
                    self.conn.reset_stream(stream_id)
                    self.flush()
                except (ProtocolError, AssertionError):
                    return
                self.free_channels.release()

    def connection_lost(self, exc: Exception | None) -> None:
        # aioapns sets an exception on every pending future; skip ones already done.
        self.requests = {k: f for k, f in self.requests.items() if not f.done()}
        super().connection_lost(exc)


@dataclass(eq=False)
class TenantApns:
    """APNs clients of one tenant in one environment: ``apns_connections`` round-robin clients."""

    tenant: str
    environment: Literal["sandbox", "production"]
    credentials: ApnsCredentials = field(repr=False)
    settings: PushSettings = field(repr=False)
    generation: int = field(default=0, init=False)
    _clients: list[APNs] = field(default_factory=list, init=False)
    _next: Iterator[int] = field(default_factory=itertools.count, init=False)
    _renewing: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def __post_init__(self) -> None:
        self._ssl = ssl.create_default_context(cafile=self.settings.apns_ca_file)
        host = self.settings.apns_host or APPLE_HOSTS[self.environment]
        attributes = {"APNS_SERVER": host, "APNS_PORT": self.settings.apns_port}
        self._protocol = type("VoipProtocol", (_VoipProtocol,), attributes)

    def _open(self) -> list[APNs]:
        # Built inside the running loop: aioapns reads the current loop in its constructor.
        clients = []
        pem = self.credentials.key_pem()
        signing: dict[str, Any]
        if pem is not None:
            signing = {
                "key": pem,
                "key_id": self.credentials.key_id,
                "team_id": self.credentials.team_id,
            }
        else:
            assert self.credentials.cert_file is not None
            signing = {"client_cert": str(self.credentials.cert_file)}
        for _ in range(self.settings.apns_connections):
            client = APNs(
                **signing,
                topic=f"{self.credentials.bundle_id}.voip",
                max_connections=1,
                max_connection_attempts=2,
                use_sandbox=self.environment == "sandbox",
                ssl_context=self._ssl,
                err_func=_quiet,
            )
            client.pool.protocol_class = self._protocol
            clients.append(client)
        return clients

    async def send(
        self,
        token: str,
        payload: dict[str, Any],
        *,
        topic: str,
        apns_id: str,
        timeout_s: float | None = None,
    ) -> PushResult:
        """One VoIP push: priority 10, expiring now (deliver once, never store for later)."""
        if not self._clients:
            self._clients = self._open()
        client = self._clients[next(self._next) % len(self._clients)]
        request = NotificationRequest(
            device_token=token,
            message=payload,
            notification_id=apns_id,
            time_to_live=0,
            priority=10,
            push_type=PushType.VOIP,
            apns_topic=topic,
        )
        started = time.monotonic()
        try:
            # asyncio.timeout, not wait_for: no extra task per push on the hot path.
            async with asyncio.timeout(timeout_s or self.settings.apns_timeout_s):
                result = await client.send_notification(request)
        except TimeoutError:
            return PushResult(0, "Timeout", None, time.monotonic() - started)
        except (MaxAttemptsExceeded, ConnectionClosed, ConnectionError, OSError) as exc:
            log.warning("APNs unreachable for tenant %s: %s", self.tenant, type(exc).__name__)
            return PushResult(0, "ConnectionFailed", None, time.monotonic() - started)
        return PushResult(
            int(result.status),
            result.description,
            int(result.timestamp) if result.timestamp is not None else None,
            time.monotonic() - started,
        )

    async def renew_provider_token(self, seen_generation: int) -> None:
        """New connections sign new provider tokens; concurrent callers renew once."""
        async with self._renewing:
            if self.generation != seen_generation:
                return
            old, self._clients = self._clients, self._open()
            self.generation += 1
            for client in old:
                client.pool.close()
            log.info("renewed the APNs provider token of tenant %s", self.tenant)

    def close(self) -> None:
        for client in self._clients:
            client.pool.close()
        self._clients = []


async def _quiet(_request: NotificationRequest, _result: NotificationResult) -> None:
    """aioapns logs every non-200 at ERROR; the ringer logs what matters instead."""


class ApnsPool:
    """Every tenant's APNs clients, created on first use."""

    def __init__(self, credentials: dict[str, ApnsCredentials], settings: PushSettings) -> None:
        self.credentials = credentials
        self._settings = settings
        self._clients: dict[tuple[str, str], TenantApns] = {}

    def client(self, tenant: str, environment: str) -> TenantApns:
        if environment not in APPLE_HOSTS:
            raise InvalidMessage(f"unknown APNs environment {environment!r}")
        key = (tenant, environment)
        client = self._clients.get(key)
        if client is None:
            credentials = self.credentials.get(tenant)
            if credentials is None:
                raise InvalidMessage(f"no APNs credentials for tenant {tenant!r}")
            env: Literal["sandbox", "production"] = (
                "sandbox" if environment == "sandbox" else "production"
            )
            client = TenantApns(tenant, env, credentials, self._settings)
            self._clients[key] = client
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
