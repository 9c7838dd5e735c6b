"""The local stack behind ``voicemesh up`` / ``make run``.

Starts nats-server and redis-server from their wheels (data under ``.voicemesh/``),
provisions the JetStream streams, starts every service as its own process with prefixed
log lines, waits until every ``/healthz`` is green, prints what runs where, and on Ctrl-C
(or SIGTERM) stops everything in order, leaving nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets as secrets_mod
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from voicemesh.cli.bus import open_nats
from voicemesh.common import TenantRegistry
from voicemesh.common.contracts import streams
from voicemesh.testkit.embedded import EmbeddedServer, free_port, start_nats, start_redis

__all__ = ["SERVICES", "Component", "Stack", "StackOptions", "run_stack"]

#: Services in start order with the port each prefers (another is used when it is taken).
SERVICES: dict[str, int] = {
    "gateway": 8080,
    "push": 8081,
    "agent": 8082,
    "crm": 8083,
    "calendar": 8084,
    "sms": 8085,
    "audit": 8086,
    "transcript": 8087,
}

COLORS = ["36", "32", "35", "33", "34", "31", "96", "92", "95", "93"]


@dataclass
class Component:
    """A process of the stack: a service, or a helper such as the APNs simulator."""

    name: str
    argv: list[str]
    env: dict[str, str]
    http_port: int | None = None
    health_path: str = "/healthz"
    url: str = ""
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass
class StackOptions:
    data_dir: Path = Path(".voicemesh")
    services: list[str] = field(default_factory=lambda: list(SERVICES))
    otlp_endpoint: str | None = None
    nats_port: int | None = None
    ready_timeout: float = 60.0
    out: TextIO = sys.stdout


def _apns_simulator(stack: Stack) -> None:
    from voicemesh.apnssim.stack import extend_stack  # issue 5: APNs simulator for push

    extend_stack(stack)


#: Hooks that add helper processes and service settings to the stack (e.g. the APNs
#: simulator). Each gets the stack after NATS and Redis are up and may add components or
#: environment for the services.
EXTENSIONS: list[Callable[[Stack], None]] = [_apns_simulator]


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.resolve()
        self.nats: EmbeddedServer | None = None
        self.redis: EmbeddedServer | None = None
        self.helpers: list[Component] = []
        self.components: list[Component] = []
        self.service_env: dict[str, str] = {}
        self._stopping = asyncio.Event()
        self._color = iter(COLORS * 4)
        self._width = max(len(n) for n in [*SERVICES, "apns-sim", "nats", "redis"])

    # -- output ----------------------------------------------------------------------------

    def say(self, message: str) -> None:
        self.options.out.write(message + "\n")
        self.options.out.flush()

    async def _pump(self, component: Component, color: str) -> None:
        assert component.proc is not None and component.proc.stdout is not None
        prefix = f"\x1b[{color}m{component.name:<{self._width}}\x1b[0m | "
        if not self.options.out.isatty():
            prefix = f"{component.name:<{self._width}} | "
        while line := await component.proc.stdout.readline():
            self.say(prefix + line.decode(errors="replace").rstrip())

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.nats = await asyncio.to_thread(
            start_nats, self.data_dir / "nats", port=self.options.nats_port
        )
        self.redis = await asyncio.to_thread(start_redis, self.data_dir / "redis")
        self.say(f"nats-server {self.nats.url} (JetStream in {self.data_dir / 'nats'})")
        self.say(f"redis-server {self.redis.url}")
        await self._apply_streams()

        secrets = self._local_secrets()
        self.service_env = {
            "VOICEMESH_NATS_URL": self.nats.url,
            "VOICEMESH_REDIS_URL": self.redis.url,
            "VOICEMESH_CALL_TOKEN_SECRET": secrets["call_token_secret"],
            "VOICEMESH_API_KEYS": ",".join(f"{t}:{k}" for t, k in secrets["api_keys"].items()),
            "PYTHONUNBUFFERED": "1",
        }
        if self.options.otlp_endpoint:
            self.service_env["VOICEMESH_OTLP_ENDPOINT"] = self.options.otlp_endpoint
        for extend in EXTENSIONS:
            extend(self)
        for helper in self.helpers:
            await self._spawn(helper)

        ports = {name: free_port(SERVICES[name]) for name in self.options.services}
        if "gateway" in ports:
            # Pushes carry the gateway's signaling URL; the phone answers there.
            self.service_env["VOICEMESH_GATEWAY_PUBLIC_URL"] = (
                f"http://127.0.0.1:{ports['gateway']}"
            )
        for name in self.options.services:
            port = ports[name]
            env = {
                **self.service_env,
                "VOICEMESH_HTTP_PORT": str(port),
                "VOICEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{self.data_dir / (name + '.db')}",
            }
            component = Component(
                name,
                [sys.executable, "-m", f"voicemesh.{name}"],
                env,
                http_port=port,
                url=f"http://127.0.0.1:{port}",
            )
            self.components.append(component)
            await self._spawn(component)

        await self._wait_healthy()
        self._write_state()
        self._print_table(time.monotonic() - started)

    def _local_secrets(self) -> dict[str, Any]:
        """Secrets for the local stack: made once, kept in .voicemesh/secrets.json (0600)."""
        path = self.data_dir / "secrets.json"
        if path.exists():
            stored: dict[str, Any] = json.loads(path.read_text())
            return stored
        made = {
            "call_token_secret": secrets_mod.token_urlsafe(48),
            "api_keys": {t.id: "vmk_" + secrets_mod.token_urlsafe(24) for t in _tenants()},
        }
        path.touch(mode=0o600)
        path.write_text(json.dumps(made, indent=2))
        self.say(f"local API keys for the demo tenants are in {path}")
        return made

    async def _apply_streams(self) -> None:
        assert self.nats is not None
        client = await open_nats(self.nats.url, name="voicemesh-up")
        try:
            results = await streams.apply(client.jetstream())
        finally:
            await client.drain()
        created = sum(1 for r in results if r.action != "unchanged")
        self.say(f"JetStream: {len(results)} streams and consumers ({created} created or updated)")

    async def _spawn(self, component: Component) -> None:
        component.proc = await asyncio.create_subprocess_exec(
            *component.argv,
            env={**os.environ, **component.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        component.pump = asyncio.create_task(self._pump(component, next(self._color)))

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.options.ready_timeout
        pending = [c for c in [*self.helpers, *self.components] if c.http_port]
        async with httpx.AsyncClient(timeout=1.0) as client:
            while pending:
                for component in list(pending):
                    assert component.proc is not None
                    if component.proc.returncode is not None:
                        raise RuntimeError(
                            f"{component.name} exited with {component.proc.returncode}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        response = await client.get(
                            f"http://127.0.0.1:{component.http_port}{component.health_path}"
                        )
                        if response.status_code == 200:
                            pending.remove(component)
                if pending and time.monotonic() > deadline:
                    names = ", ".join(c.name for c in pending)
                    raise RuntimeError(
                        f"not healthy after {self.options.ready_timeout:.0f}s: {names}"
                    )
                await asyncio.sleep(0.1)

    def _rows(self) -> list[tuple[str, str, str]]:
        assert self.nats is not None and self.redis is not None
        rows: list[tuple[str, str, str]] = []
        for component in self.components:
            url = component.url
            if component.name == "gateway":
                rows.insert(
                    0, ("demo", url + "/demo", str(component.proc.pid if component.proc else ""))
                )
            rows.append((component.name, url, str(component.proc.pid if component.proc else "")))
        for helper in self.helpers:
            rows.append((helper.name, helper.url, str(helper.proc.pid if helper.proc else "")))
        rows.append(("nats", self.nats.url, str(self.nats.pid)))
        rows.append(("redis", self.redis.url, str(self.redis.pid)))
        return rows

    def _print_table(self, elapsed: float) -> None:
        rows = self._rows()
        width = max(len(r[1]) for r in rows)
        self.say("")
        self.say(f"voicemesh is up in {elapsed:.1f}s. Open the demo: {rows[0][1]}")
        self.say(f"  {'what':<12} {'where':<{width}}  pid")
        for name, url, pid in rows:
            self.say(f"  {name:<12} {url:<{width}}  {pid}")
        self.say("Press Ctrl-C to stop everything.")
        self.say("")

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "components": [{"name": n, "url": u, "pid": int(p)} for n, u, p in self._rows() if p],
        }
        (self.data_dir / "stack.json").write_text(json.dumps(state, indent=2))

    async def wait(self) -> None:
        """Until Ctrl-C or SIGTERM; a service that dies is reported, not hidden."""
        watchers = [asyncio.create_task(self._watch(c)) for c in [*self.helpers, *self.components]]
        try:
            await self._stopping.wait()
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _watch(self, component: Component) -> None:
        assert component.proc is not None
        code = await component.proc.wait()
        if not self._stopping.is_set():
            self.say(f"!! {component.name} exited with {code}; the rest of the stack keeps running")

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Services first (they drain), then helpers, then Redis and NATS. Idempotent."""
        self._stopping.set()
        for group in (self.components, self.helpers):
            for component in group:
                _signal(component, signal.SIGTERM)
            for component in group:
                if component.proc is None:
                    continue
                try:
                    await asyncio.wait_for(component.proc.wait(), timeout=20)
                except TimeoutError:
                    _signal(component, signal.SIGKILL)
                    await component.proc.wait()
                if component.pump is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(component.pump, timeout=2)
        for server in (self.redis, self.nats):
            if server is not None:
                await asyncio.to_thread(server.stop)
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "stack.json").unlink()
        self.say("voicemesh stopped; nothing left running.")


def _tenants() -> TenantRegistry:
    """The stack's tenants: ``VOICEMESH_TENANTS`` when set, else one demo tenant per vertical."""
    spec = os.environ.get("VOICEMESH_TENANTS", "")
    return TenantRegistry.parse(spec) if spec else TenantRegistry.demo()


def _signal(component: Component, sig: int) -> None:
    if component.proc is not None and component.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(component.proc.pid, sig)


async def run_stack(options: StackOptions) -> int:
    stack = Stack(options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stack.request_stop)
    try:
        starting = asyncio.create_task(stack.start())
        stop_wait = asyncio.create_task(stack._stopping.wait())
        done, _ = await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            stop_wait.cancel()
            starting.result()
            await stack.wait()
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
        return 0
    except Exception as exc:
        stack.say(f"voicemesh up failed: {exc}")
        return 1
    finally:
        await stack.stop()
