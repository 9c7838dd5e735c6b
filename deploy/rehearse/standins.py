"""Local stand-ins for the images that cannot be installed on this machine.

    python -m deploy.rehearse.standins jaeger     # OTLP receiver on Jaeger's ports
    python -m deploy.rehearse.standins exporter ARGS  # prometheus-nats-exporter's /metrics
    python -m deploy.rehearse.standins postgres   # the postgres image's entrypoint steps

``jaeger`` receives OTLP over HTTP (4318), the protocol the services export with, and
appends every span to ``VMRH_SPANS_FILE`` as one JSON object per line; its admin port
(14269) answers ``/`` for the probes. ``postgres`` does what the postgres image's
``docker-entrypoint.sh`` does: ``initdb`` with ``POSTGRES_PASSWORD`` for the ``postgres``
user if ``PGDATA`` is empty, password (scram) logins from any host, then the server,
as the machine's ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from deploy.rehearse.images import POSTGRES_BIN


def _serve(
    port: int,
    get: Callable[[str], tuple[int, bytes]],
    post: Callable[[str, bytes], tuple[int, bytes]] | None = None,
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(*get(self.path))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._answer(*(post(self.path, body) if post else (405, b"")))

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def jaeger() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    out = Path(os.environ["VMRH_SPANS_FILE"])
    lock = threading.Lock()

    def collect(request: ExportTraceServiceRequest) -> None:
        lines = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {
                        a.key: str(getattr(a.value, a.value.WhichOneof("value") or "string_value"))
                        for a in span.attributes
                    }
                    lines.append(
                        json.dumps(
                            {
                                "service": service,
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "attributes": attributes,
                            }
                        )
                    )
        with lock, out.open("a") as f:
            f.writelines(line + "\n" for line in lines)

    def post(path: str, body: bytes) -> tuple[int, bytes]:
        if path != "/v1/traces":
            return 404, b""
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        collect(request)
        return 200, ExportTraceServiceResponse().SerializeToString()

    _serve(4318, lambda _: (405, b""), post)
    _serve(14269, lambda _: (200, b"{}"))
    _serve(16686, lambda _: (200, out.read_bytes() if out.exists() else b""))
    threading.Event().wait()


def exporter(args: list[str]) -> None:
    """``-port=N`` and the monitoring URL, as prometheus-nats-exporter takes them."""
    port = next(int(a.split("=", 1)[1]) for a in args if a.startswith("-port="))
    monitor = next(a for a in args if a.startswith("http")).rstrip("/")

    def metrics(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"{monitor}/varz", timeout=2) as response:  # noqa: S310
                varz = json.load(response)
        except OSError:
            return 503, b""
        lines = [f"gnatsd_varz_{k} {v}" for k, v in varz.items() if isinstance(v, int | float)]
        return 200, ("\n".join(lines) + "\n").encode()

    _serve(port, metrics)
    threading.Event().wait()


def postgres(args: list[str]) -> None:
    user = pwd.getpwnam("postgres")
    pgdata = Path(os.environ["PGDATA"])
    for path in (pgdata.parent, Path("/var/run/postgresql")):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, user.pw_uid, user.pw_gid)
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    if not (pgdata / "PG_VERSION").exists():
        with tempfile.NamedTemporaryFile("w", dir="/tmp") as pwfile:
            pwfile.write(os.environ["POSTGRES_PASSWORD"])
            pwfile.flush()
            subprocess.run(  # noqa: S603 - Debian's initdb
                [
                    str(POSTGRES_BIN / "initdb"),
                    "-D",
                    str(pgdata),
                    "--username=postgres",
                    f"--pwfile={pwfile.name}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        with (pgdata / "pg_hba.conf").open("a") as hba:
            hba.write("host all all all scram-sha-256\n")
    if args[:1] == ["postgres"]:  # the image's CMD; options alone mean the same
        args = args[1:]
    argv = [
        str(POSTGRES_BIN / "postgres"),
        "-D",
        str(pgdata),
        "-c",
        "listen_addresses=*",
        "-k",
        "/var/run/postgresql",
        *args,
    ]
    os.execv(argv[0], argv)  # noqa: S606


def main(argv: list[str]) -> None:
    which, rest = argv[0], argv[1:]
    if which == "jaeger":
        jaeger()
    elif which == "exporter":
        exporter(rest)
    elif which == "postgres":
        postgres(rest)
    else:
        raise SystemExit(f"unknown stand-in {which}")


if __name__ == "__main__":
    main(sys.argv[1:])
