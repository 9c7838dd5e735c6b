"""The runtime every voicemesh service shares.

A service builds a ``MeshService`` in its ``create_app(settings)``, opens its database with
``service.database()``, registers its subscribers on ``service.broker``
(``subscribe_durable``), its tools on a ``ToolServer`` and its routes on ``service.http`` (a
``NotFound`` a route lets through answers 404, an ``UnavailableError`` 503), hands its live
state to ``service.provide`` (reached typed with ``service.get(Kind)``), and its
``__main__`` calls ``serve``. The service is a
FastStream app (the broker and its hooks) served next to a small HTTP app with the probes
and ``/metrics``:

- ``/livez``: 200 while the process's event loop answers at all. It checks no dependency,
  so a NATS outage never makes Kubernetes restart a pod (the liveness probe).
- ``/readyz``: 200 only while the broker is connected, else 503 (the readiness probe: a
  pod without NATS gets no traffic). ``/healthz`` is the same check, for older probes.
 ``/metrics`` and the API docs are
public unless the settings close them (``public_docs``, ``public_metrics``,
``metrics_token``): open for ``make run``, closed in the production manifests.

Start order: resources (``on_startup``) → broker and subscribers → HTTP ready.
Stop order (SIGTERM or Ctrl-C): HTTP stops accepting → broker drains in-flight handlers
(``graceful_timeout``) → resources closed (``on_shutdown``, reverse order) → spans flushed.
A SIGTERM while the service is still starting (a hook or the broker waiting for an
unreachable NATS, which it retries forever) abandons the start: what was opened is closed
and the process exits 0 at once, not when Kubernetes' grace period runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import uvicorn
from fastapi import FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse
from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from voicemesh.common.contracts.errors import NotFound, UnavailableError
from voicemesh.common.runtime.bus import make_broker
from voicemesh.common.runtime.logs import configure_logging
from voicemesh.common.runtime.settings import ServiceSettings
from voicemesh.common.runtime.telemetry import Telemetry, setup_telemetry

if TYPE_CHECKING:
    from voicemesh.common.runtime.db import Database

__all__ = [
    "GracefulServer",
    "Hook",
    "MeshService",
    "Startable",
    "freeze_startup_heap",
    "run",
    "serve",
    "setup_process",
]

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]
SettingsT = TypeVar("SettingsT", bound=ServiceSettings)
StateT = TypeVar("StateT")

HEALTH_PING_TIMEOUT_S = 1.0
#: How often an abandoned start is cancelled again until it has ended.
CANCEL_AGAIN_S = 0.05
#: What stops a served service: Kubernetes' SIGTERM, Ctrl-C.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Startable(Protocol):
    """Something that runs while the service does: a poller, a writer, a cache."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


#: How the HTTP API of every service answers the mesh errors a route lets through.
HTTP_STATUS_OF_ERROR: dict[type[Exception], int] = {NotFound: 404, UnavailableError: 503}


class MeshService:
    """One voicemesh service process: broker, HTTP app, telemetry and lifecycle hooks."""

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        *,
        description: str = "",
        telemetry: Telemetry | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.tenants = settings.tenant_registry()
        self.telemetry = telemetry or setup_telemetry(name, otlp_endpoint=settings.otlp_endpoint)
        self.broker: NatsBroker
        phi_tenants = {t.id for t in self.tenants if t.vertical.handles_phi}
        self.broker, self.events, self.delivery = make_broker(
            settings, self.telemetry, name=name, handles_phi=phi_tenants.__contains__
        )
        self.faststream = FastStream(
            self.broker,
            specification=AsyncAPI(
                title=f"voicemesh {name}", version="1.0.0", description=description
            ),
            logger=logging.getLogger(f"voicemesh.{name}.app"),
        )
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._running = False
        self._abandoned = False
        self._starting: asyncio.Task[None] | None = None
        self._stopper: asyncio.Future[None] | None = None
        self._state: dict[type, object] = {}
        docs = settings.public_docs
        self.http = FastAPI(
            title=f"voicemesh {name}",
            description=description,
            version="1.0.0",
            lifespan=self._lifespan,
            openapi_url="/openapi.json" if docs else None,
            docs_url="/docs" if docs else None,
            redoc_url="/redoc" if docs else None,
        )
        self._up = Gauge(
            "voicemesh_broker_connected",
            "1 while the service's NATS connection is up",
            registry=self.telemetry.registry,
        )
        self.http.add_api_route(
            "/livez",
            self._livez,
            methods=["GET"],
            tags=["ops"],
            summary="200 while the process serves at all; checks no dependency",
        )
        for path in ("/readyz", "/healthz"):
            self.http.add_api_route(
                path,
                self._readyz,
                methods=["GET"],
                tags=["ops"],
                summary="200 while the broker is connected, else 503",
            )
        if settings.public_metrics or settings.metrics_token is not None:
            self.http.add_api_route(
                "/metrics",
                self._metrics,
                methods=["GET"],
                tags=["ops"],
                summary="Prometheus metrics (a bearer token when VOICEMESH_METRICS_TOKEN is set)",
                include_in_schema=True,
            )
        for kind, status_code in HTTP_STATUS_OF_ERROR.items():
            self.http.add_exception_handler(kind, _answer_with(status_code))

    # -- live state ---------------------------------------------------------------------------

    def provide(self, state: StateT) -> StateT:
        """Hold ``state`` (one object per type) for routes, tests and tools to reach typed."""
        self._state[type(state)] = state
        return state

    def get(self, kind: type[StateT]) -> StateT:
        """The state object of type ``kind`` that ``create_app`` provided."""
        try:
            state = self._state[kind]
        except KeyError:
            raise LookupError(f"{self.name} provides no {kind.__name__}") from None
        assert isinstance(state, kind)
        return state

    # -- resources --------------------------------------------------------------------------

    def database(self) -> Database:
        """The service's SQL database (``settings.database_url``), opened and closed with it.

        Its tables are created before, and the engine is closed after, the hooks registered
        later, so they may use it. The engine connects lazily: nothing is opened before then.
        """
        # Imported here: services without a database need not load SQLAlchemy.
        from voicemesh.common.runtime.db import Database

        db = Database(self.settings.database_url.get_secret_value())
        self.on_startup(db.create_all)
        self.on_shutdown(db.close)
        return db

    # -- hooks ------------------------------------------------------------------------------

    def on_startup(self, hook: Hook) -> Hook:
        """Run ``hook`` before the broker starts (open databases and clients here)."""
        self._startup.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        """Run ``hook`` after the broker has drained (close what ``on_startup`` opened)."""
        self._shutdown.append(hook)
        return hook

    def own(self, part: Startable) -> None:
        """Start ``part`` after the hooks registered so far and stop it before them."""
        self.on_startup(part.start)
        self.on_shutdown(part.stop)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the startup hooks, then start the broker and its subscribers.

        After ``abandon_start`` it returns without the service running, having closed what
        the hooks had opened.
        """
        if self._abandoned:
            return
        nats_urls = ", ".join(self.settings.nats_urls)
        log.info("%s starting; NATS %s", self.name, nats_urls)
        starting = asyncio.ensure_future(self._start_parts())
        self._starting = starting
        try:
            await starting
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not starting.cancelled() or (current is not None and current.cancelling()):
                raise  # this task itself is cancelled, not only the start
            log.info("%s stopped while starting", self.name)
            await self._close()
            return
        finally:
            self._starting = None
        self._running = True
        log.info("%s started; NATS %s", self.name, nats_urls)

    async def _start_parts(self) -> None:
        for hook in self._startup:
            await hook()
        await self.faststream.start()

    def abandon_start(self) -> None:
        """Give up a start in progress or not begun yet (SIGTERM while starting).

        A service already running is not affected: ``stop`` ends it.
        """
        if self._starting is not None and not self._abandoned:
            # Held here: a task nothing refers to may be garbage-collected before it ends.
            self._stopper = asyncio.ensure_future(_cancel_until_done(self._starting))
        self._abandoned = True

    async def stop(self) -> None:
        """Drain and close; calling it twice is harmless."""
        if not self._running:
            return
        self._running = False
        await self._close()

    async def _close(self) -> None:
        try:
            await self.faststream.stop()
        finally:
            for hook in reversed(self._shutdown):
                try:
                    await hook()
                except Exception:
                    log.exception("shutdown hook %r failed", hook)
            self.telemetry.shutdown()
            log.info("%s stopped", self.name)

    @asynccontextmanager
    async def _lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def connected(self) -> bool:
        return self._running and await self.broker.ping(timeout=HEALTH_PING_TIMEOUT_S)

    async def _livez(self) -> Response:
        return Response(f'{{"service":"{self.name}","alive":true}}', media_type="application/json")

    async def _readyz(self) -> Response:
        ok = await self.connected()
        self._up.set(1 if ok else 0)
        body = f'{{"service":"{self.name}","broker":"{"connected" if ok else "disconnected"}"}}'
        return Response(body, status_code=200 if ok else 503, media_type="application/json")

    async def _metrics(self, authorization: str | None = Header(default=None)) -> Response:
        token = self.settings.metrics_token
        if token is not None:
            scheme, _, presented = (authorization or "").partition(" ")
            expected = token.get_secret_value().encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), expected
            ):
                return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        self._up.set(1 if await self.connected() else 0)
        return Response(generate_latest(self.telemetry.registry), media_type=CONTENT_TYPE_LATEST)


async def _cancel_until_done(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` again until it ends: Python 3.11's ``asyncio.wait_for`` (which nats-py
    connects with) loses a cancellation that comes as the attempt it waits for fails, and the
    connection loop then retries on as if nothing had happened."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)


def _answer_with(status_code: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def answer(_request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=status_code)

    return answer


class GracefulServer(uvicorn.Server):
    """uvicorn, but a SIGTERM or SIGINT that shut the service down cleanly exits with 0,
    and one that comes while the service is still starting ends the start.

    (uvicorn re-raises the captured signal after shutdown, so the process would report
    death by signal even when every call was drained; and it only notes a signal during
    startup, which a service waiting for NATS would never get past.)
    """

    def __init__(self, config: uvicorn.Config, service: MeshService | None = None) -> None:
        super().__init__(config)
        self.service = service  # None: a plain app (the APNs simulator's admin API)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.service is not None:
            self.service.abandon_start()


def _exit_at_once(_sig: int, _frame: FrameType | None) -> None:
    """SIGTERM before the server runs: nothing is open yet, so exit cleanly now."""
    raise SystemExit(0)


def run(service: MeshService, **uvicorn_options: Any) -> None:
    """Serve ``service`` until SIGTERM or SIGINT, then shut down cleanly."""
    settings = service.settings
    config = uvicorn.Config(
        service.http,
        host=settings.http_host,
        port=settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout),
        **uvicorn_options,
    )
    server = GracefulServer(config, service)
    asyncio.run(server.serve())
    if not server.started:
        raise SystemExit(1)


def setup_process(service_name: str, settings: ServiceSettings) -> None:
    """Logging for a service entry point (healthcare-class tenants get PHI redaction), and
    a SIGTERM from here until ``run`` serves exits 0 at once."""
    signal.signal(signal.SIGTERM, _exit_at_once)
    redact = any(t.vertical.handles_phi for t in settings.tenant_registry())
    configure_logging(service_name, settings.log_level, redact_phi=redact)


async def freeze_startup_heap() -> None:
    """Leave what startup built out of every later garbage collection.

    Modules, schemas, the engine and the broker live as long as the process, yet each full
    (generation 2) collection walked all ~130,000 of them: a 65-70 ms pause that every tool
    call in flight waited out, the whole of the p99 at 20 callers. Frozen, they are skipped.
    Only for a process entry point: a frozen heap is never collected, which a test process
    starting many services must not do.
    """
    gc.collect()
    gc.freeze()


def serve(
    name: str,
    settings_type: type[SettingsT],
    create_app: Callable[[SettingsT], MeshService],
    *,
    freeze_heap: bool = False,
) -> None:
    """A service's ``__main__``: settings from the environment, logging, then ``run``."""
    settings = settings_type()
    setup_process(name, settings)
    service = create_app(settings)
    if freeze_heap:
        service.faststream.after_startup(freeze_startup_heap)
    run(service)
