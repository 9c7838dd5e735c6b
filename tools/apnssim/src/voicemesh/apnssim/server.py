"""The APNs provider API, simulated: HTTP/2 over TLS, validating requests as Apple does.

``ApnsSimulator`` listens with raw ``h2`` (no ASGI server: Apple answers a 200 with a
HEADERS frame that ends the stream and no DATA frame, and aioapns depends on that). It
checks the method, path, device token, provider token (ES256, known key, team, age),
topic, push type, priority, expiration, ids and payload size, answers with Apple's status
codes and reasons, and records every request it received for tests and the phone to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from voicemesh.apnssim.behaviours import Behaviour, behaviour_of
from voicemesh.apnssim.certs import make_tls_material

__all__ = ["ApnsSimulator", "ProviderKey", "ReceivedPush", "TokenState"]

log = logging.getLogger(__name__)

PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "location",
        "pushtotalk",
        "widgets",
    }
)
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
#: APNs rejects a provider token whose ``iat`` is more than an hour old.
MAX_TOKEN_AGE_S = 3600.0
#: ... and a connection that changes its token more often than every 20 minutes.
MIN_TOKEN_REFRESH_S = 20 * 60.0
_HEX_TOKEN = re.compile(r"^(?:[0-9a-fA-F]{2}){32,100}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class ProviderKey:
    """A team's APNs auth key as Apple knows it: the public half, and the topics it may push."""

    key_id: str
    team_id: str
    public_pem: str
    topics: frozenset[str] | None = None  # bundle ids; None = any

    def allows(self, topic: str) -> bool:
        if self.topics is None:
            return True
        return topic.removesuffix(".voip") in self.topics


@dataclass
class TokenState:
    """What the simulator knows about one device token beyond its prefix behaviour."""

    behaviour: Behaviour | None = None
    topic: str | None = None  # the app topic the device registered for
    unregistered_at_ms: int | None = None


@dataclass
class ReceivedPush:
    """One request as the simulator saw it and what it answered."""

    seq: int
    received_at: float
    connection: int
    method: str
    path: str
    token: str
    apns_id: str
    topic: str | None
    push_type: str | None
    priority: str | None
    expiration: str | None
    collapse_id: str | None
    key_id: str | None
    team_id: str | None
    payload_bytes: int
    payload: Any
    status: int = 0
    reason: str | None = None
    answered_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Stream:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)


class _Reject(Exception):
    def __init__(self, status: int, reason: str, timestamp_ms: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.timestamp_ms = timestamp_ms


class ApnsSimulator:
    """An APNs-compatible HTTP/2 + TLS server on loopback.

    ``keys`` are the provider keys it accepts. Behaviour per token comes from the token's
    prefix (``behaviours.PREFIXES``) or from ``set_token``. ``received`` records every
    request in arrival order.
    """

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        *,
        keys: list[ProviderKey] | None = None,
        max_token_age_s: float = MAX_TOKEN_AGE_S,
        min_token_refresh_s: float = MIN_TOKEN_REFRESH_S,
        max_concurrent_streams: int = 1000,
        slow_s: float = 1.0,
        max_records: int = 100_000,
        ca_path: Path | None = None,
    ) -> None:
        #: The CA that signed ``cert_path``, for clients to trust (when the caller knows it).
        self.ca_path = ca_path
        self.keys: dict[str, ProviderKey] = {k.key_id: k for k in keys or []}
        self.max_token_age_s = max_token_age_s
        self.min_token_refresh_s = min_token_refresh_s
        self.max_concurrent_streams = max_concurrent_streams
        self.slow_s = slow_s
        self.max_records = max_records
        self.tokens: dict[str, TokenState] = {}
        self.received: list[ReceivedPush] = []
        self.connections_opened = 0
        self._attempts: Counter[str] = Counter()
        self._verified: dict[str, tuple[str, str, int]] = {}
        self._seq = 0
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(str(cert_path), str(key_path))
        self._ssl.set_alpn_protocols(["h2"])
        self._server: asyncio.Server | None = None
        self._protocols: set[_ApnsProtocol] = set()
        self._changed = asyncio.Condition()
        self.port = 0
        self.host = "127.0.0.1"

    @classmethod
    def with_own_tls(cls, directory: Path, **options: Any) -> ApnsSimulator:
        """A simulator on a certificate made in ``directory``, signed by a CA made with it."""
        tls = make_tls_material(directory)
        return cls(tls.cert_path, tls.key_path, ca_path=tls.ca_path, **options)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> ApnsSimulator:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ApnsProtocol(self), host, port, ssl=self._ssl
        )
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("APNs simulator listening on %s:%d", host, self.port)
        return self

    async def stop(self) -> None:
        """Close the listener and every open connection; calling it twice is harmless."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for protocol in list(self._protocols):
            protocol.close()
        await server.wait_closed()

    async def __aenter__(self) -> ApnsSimulator:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # -- configuration ----------------------------------------------------------------------

    def add_key(self, key: ProviderKey) -> None:
        self.keys[key.key_id] = key

    def set_token(
        self,
        token: str,
        *,
        behaviour: Behaviour | None = None,
        topic: str | None = None,
        unregistered_at_ms: int | None = None,
    ) -> None:
        state = self.tokens.setdefault(token.lower(), TokenState())
        if behaviour is not None:
            state.behaviour = behaviour
        if topic is not None:
            state.topic = topic
        if unregistered_at_ms is not None:
            state.unregistered_at_ms = unregistered_at_ms

    def close_connections(self) -> int:
        """Drop every client connection (as APNs does on maintenance); returns how many."""
        protocols = list(self._protocols)
        for protocol in protocols:
            protocol.close()
        return len(protocols)

    # -- records ----------------------------------------------------------------------------

    def pushes(self, token: str | None = None, since: int = 0) -> list[ReceivedPush]:
        return [
            p
            for p in self.received
            if p.seq > since and (token is None or p.token == token.lower())
        ]

    def clear(self) -> None:
        self.received.clear()

    async def wait_for(
        self, count: int = 1, *, token: str | None = None, timeout: float = 10.0
    ) -> list[ReceivedPush]:
        """Until at least ``count`` answered requests (for ``token``) were recorded."""

        def ready() -> bool:
            return len([p for p in self.pushes(token) if p.answered_at is not None]) >= count

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(ready), timeout)
        return self.pushes(token)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- request handling -------------------------------------------------------------------

    def _record(self, connection: int, stream: _Stream) -> ReceivedPush:
        self._seq += 1
        headers = stream.headers
        values = dict(headers)
        path = values.get(":path", "")
        token = path.removeprefix("/3/device/").lower() if path.startswith("/3/device/") else ""
        kid = iss = None
        auth = values.get("authorization", "")
        if auth.lower().startswith("bearer "):
            with contextlib.suppress(jwt.PyJWTError):
                kid = jwt.get_unverified_header(auth[7:]).get("kid")
                iss = jwt.decode(auth[7:], options={"verify_signature": False}).get("iss")
        try:
            payload: Any = json.loads(stream.body) if stream.body else None
        except ValueError:
            payload = stream.body.decode("utf-8", errors="replace")
        push = ReceivedPush(
            seq=self._seq,
            received_at=time.time(),
            connection=connection,
            method=values.get(":method", ""),
            path=path,
            token=token,
            apns_id=values.get("apns-id") or str(uuid.uuid4()),
            topic=values.get("apns-topic"),
            push_type=values.get("apns-push-type"),
            priority=values.get("apns-priority"),
            expiration=values.get("apns-expiration"),
            collapse_id=values.get("apns-collapse-id"),
            key_id=kid,
            team_id=iss,
            payload_bytes=len(stream.body),
            payload=payload,
        )
        self.received.append(push)
        if len(self.received) > self.max_records:
            del self.received[: len(self.received) - self.max_records]
        return push

    def _check_provider_token(self, protocol: _ApnsProtocol, authorization: str | None) -> str:
        """The request's team id, or ``_Reject`` with Apple's 403 reason."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise _Reject(403, "MissingProviderToken")
        token = authorization[7:].strip()
        cached = self._verified.get(token)
        if cached is None:
            try:
                kid = jwt.get_unverified_header(token).get("kid")
                key = self.keys.get(str(kid))
                if key is None:
                    raise _Reject(403, "InvalidProviderToken")
                claims = jwt.decode(
                    token,
                    key.public_pem,
                    algorithms=["ES256"],
                    options={"require": ["iat", "iss"], "verify_iat": False},
                )
            except jwt.PyJWTError as exc:
                raise _Reject(403, "InvalidProviderToken") from exc
            if claims.get("iss") != key.team_id or not isinstance(claims.get("iat"), int):
                raise _Reject(403, "InvalidProviderToken")
            cached = (key.key_id, key.team_id, int(claims["iat"]))
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[token] = cached
        _kid, team, issued = cached
        now = time.time()
        if issued > now + 60:
            raise _Reject(403, "InvalidProviderToken")
        if now - issued > self.max_token_age_s:
            raise _Reject(403, "ExpiredProviderToken")
        # A connection that swaps a still-valid token for another too soon is throttled.
        previous = protocol.provider_token
        if previous is not None and previous[0] != token:
            prev_issued = previous[1]
            if now - prev_issued <= self.max_token_age_s and (
                issued - prev_issued < self.min_token_refresh_s
            ):
                raise _Reject(429, "TooManyProviderTokenUpdates")
        protocol.provider_token = (token, issued)
        return team

    def _validate(self, protocol: _ApnsProtocol, stream: _Stream) -> tuple[str, Behaviour]:
        """Check a request the way APNs does; returns (token, behaviour) or raises ``_Reject``."""
        names = [name for name, _ in stream.headers]
        duplicated = [n for n, c in Counter(names).items() if c > 1 and n.startswith("apns-")]
        if duplicated:
            raise _Reject(400, "DuplicateHeaders")
        values = dict(stream.headers)
        if values.get(":method") != "POST":
            raise _Reject(405, "MethodNotAllowed")
        path = values.get(":path", "")
        if not path.startswith("/3/device/"):
            raise _Reject(404, "BadPath")
        token = path.removeprefix("/3/device/")
        if not token:
            raise _Reject(400, "MissingDeviceToken")
        if not _HEX_TOKEN.fullmatch(token):
            raise _Reject(400, "BadDeviceToken")
        token = token.lower()
        team = self._check_provider_token(protocol, values.get("authorization"))
        apns_id = values.get("apns-id")
        if apns_id is not None and not _UUID.fullmatch(apns_id):
            raise _Reject(400, "BadMessageId")
        topic = values.get("apns-topic")
        if not topic:
            raise _Reject(400, "MissingTopic")
        key = next((k for k in self.keys.values() if k.team_id == team), None)
        if key is not None and not key.allows(topic):
            raise _Reject(400, "TopicDisallowed")
        push_type = values.get("apns-push-type")
        if push_type is None or push_type not in PUSH_TYPES:
            raise _Reject(400, "InvalidPushType")
        if (push_type == "voip") != topic.endswith(".voip"):
            # A VoIP push goes to "<bundle>.voip" and only a VoIP push may.
            raise _Reject(400, "InvalidPushType")
        priority = values.get("apns-priority")
        if priority is not None and priority not in {"1", "5", "10"}:
            raise _Reject(400, "BadPriority")
        expiration = values.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            raise _Reject(400, "BadExpirationDate")
        collapse = values.get("apns-collapse-id")
        if collapse is not None and len(collapse.encode()) > MAX_COLLAPSE_ID:
            raise _Reject(400, "BadCollapseId")
        if not stream.body:
            raise _Reject(400, "PayloadEmpty")
        limit = MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD
        if len(stream.body) > limit:
            raise _Reject(413, "PayloadTooLarge")
        state = self.tokens.get(token)
        if state is not None and state.topic is not None and state.topic != topic:
            raise _Reject(400, "DeviceTokenNotForTopic")
        behaviour = state.behaviour if state and state.behaviour else behaviour_of(token)
        return token, behaviour

    async def _answer(self, protocol: _ApnsProtocol, stream_id: int, stream: _Stream) -> None:
        push = self._record(protocol.number, stream)
        try:
            token, behaviour = self._validate(protocol, stream)
            await self._behave(token, behaviour)
        except _Reject as rejection:
            push.status, push.reason = rejection.status, rejection.reason
            protocol.respond(stream_id, push.apns_id, rejection.status, rejection)
        except _Hang:
            return
        else:
            push.status = 200
            protocol.respond(stream_id, push.apns_id, 200, None)
        push.answered_at = time.time()
        await self._notify()

    async def _behave(self, token: str, behaviour: Behaviour) -> None:
        now_ms = int(time.time() * 1000)
        state = self.tokens.get(token)
        match behaviour:
            case Behaviour.OK:
                return
            case Behaviour.BAD_DEVICE_TOKEN:
                raise _Reject(400, "BadDeviceToken")
            case Behaviour.NOT_FOR_TOPIC:
                raise _Reject(400, "DeviceTokenNotForTopic")
            case Behaviour.UNREGISTERED | Behaviour.EXPIRED_TOKEN:
                stamp = state.unregistered_at_ms if state and state.unregistered_at_ms else now_ms
                reason = "Unregistered" if behaviour is Behaviour.UNREGISTERED else "ExpiredToken"
                raise _Reject(410, reason, stamp)
            case Behaviour.THROTTLED:
                raise _Reject(429, "TooManyRequests")
            case Behaviour.SERVER_ERROR:
                raise _Reject(500, "InternalServerError")
            case Behaviour.UNAVAILABLE:
                raise _Reject(503, "ServiceUnavailable")
            case Behaviour.FLAKY:
                self._attempts[token] += 1
                if self._attempts[token] <= 2:
                    raise _Reject(503, "ServiceUnavailable")
            case Behaviour.NEVER_ANSWERS:
                raise _Hang
            case Behaviour.SLOW:
                await asyncio.sleep(self.slow_s)


class _Hang(Exception):
    """The request is left without an answer on purpose."""


class _ApnsProtocol(asyncio.Protocol):
    """One client connection: h2 state, streams in progress, the tasks answering them."""

    _numbers = iter(range(1, 1 << 62))

    def __init__(self, simulator: ApnsSimulator) -> None:
        self.simulator = simulator
        self.number = next(self._numbers)
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.provider_token: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.simulator._protocols.add(self)
        self.simulator.connections_opened += 1
        self.conn.initiate_connection()
        self.conn.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: self.simulator.max_concurrent_streams}
        )
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.simulator._protocols.discard(self)
        for task in self.tasks:
            task.cancel()
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection()
                self._flush()
            self.transport.close()

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._flush()
            self.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                headers = [(str(k), str(v)) for k, v in event.headers or []]
                self.streams[event.stream_id] = _Stream(headers)
            elif isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None and event.data:
                    stream.body.extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    task = asyncio.get_running_loop().create_task(
                        self.simulator._answer(self, event.stream_id, stream)
                    )
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            elif isinstance(event, StreamReset):
                self.streams.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated):
                self.close()
        self._flush()

    def respond(self, stream_id: int, apns_id: str, status: int, error: _Reject | None) -> None:
        if self.transport is None:
            return
        headers = [(":status", str(status)), ("apns-id", apns_id)]
        try:
            if error is None:
                # Apple ends a 200 with the HEADERS frame: no DATA frame at all.
                self.conn.send_headers(stream_id, headers, end_stream=True)
            else:
                body: dict[str, Any] = {"reason": error.reason}
                if error.timestamp_ms is not None:
                    body["timestamp"] = error.timestamp_ms
                data = json.dumps(body).encode()
                self.conn.send_headers(
                    stream_id,
                    [*headers, ("content-type", "application/json; charset=utf-8")],
                )
                self.conn.send_data(stream_id, data, end_stream=True)
        except ProtocolError:
            return  # the client reset the stream (e.g. it timed out): nothing to answer
        self._flush()
