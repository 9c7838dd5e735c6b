"""The whole mesh as separate processes, started once for the end-to-end tests.

``mesh`` runs the real launcher (``voicemesh up``, what ``make run`` runs) with every
service exporting spans to the session's OTLP receiver, and hands the tests what
``.voicemesh/stack.json`` and ``secrets.json`` say: URLs, API keys, the NATS URL. One mesh
serves every test here; each test uses its own call ids, phones and time slots.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from voicemesh.testkit.fixtures import LocalDays, OtlpReceiver

READY_LINE = "Press Ctrl-C"


@dataclass
class Mesh:
    data_dir: Path
    urls: dict[str, str]
    api_keys: dict[str, str]
    call_token_secret: str
    output: list[str] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        return self.urls["nats"]

    def url(self, component: str) -> str:
        return self.urls[component]

    def auth(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_keys[tenant]}"}

    def database_url(self, service: str) -> str:
        return f"sqlite+aiosqlite:///{self.data_dir / (service + '.db')}"

    async def verify_audit_chain(self) -> None:
        """``voicemesh.audit verify`` on the mesh's audit database: every chain verifies."""
        verify = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicemesh.audit", "verify",
            "--database-url", self.database_url("audit"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        report, _ = await asyncio.wait_for(verify.communicate(), 60)
        assert verify.returncode == 0, report.decode()

    def log_tail(self, lines: int = 80, component: str = "") -> str:
        """The launcher's last output lines (every service's log, prefixed by its name),
        optionally one component's only: for failure messages."""
        chosen = [line for line in self.output if line.startswith(component)]
        return "".join(chosen[-lines:])


def call_progress(output: str) -> list[str]:
    """The progress lines of ``voicemesh call``'s output, without their ``[time]`` prefix."""
    return [line.split("] ", 1)[1] for line in output.splitlines() if line.startswith("[")]


async def voicemesh_call(
    *args: str,
    env: dict[str, str] | None = None,
    separate_stderr: bool = False,
    timeout: float = 90,
) -> tuple[int | None, str, str]:
    """``python -m voicemesh.cli call *args``: its exit code, output and (only if
    ``separate_stderr``, else it is in the output) its standard error."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicemesh.cli", "call", *args, env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if separate_stderr else asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), (err or b"").decode()


async def appointments_tomorrow_at(
    http: httpx.AsyncClient,
    calendar_url: str,
    tenant: str,
    auth: dict[str, str],
    days: LocalDays,
    at: time,
) -> list[dict[str, Any]]:
    """The tenant's appointments (calendar HTTP API) that start at ``at``, its local time,
    on any day that was "tomorrow" there since ``days`` began."""
    hours = (await http.get(f"{calendar_url}/v1/{tenant}/hours", headers=auth)).json()
    zone = ZoneInfo(hours["time_zone"])
    tomorrows = days.tomorrows(zone)
    listed = await http.get(
        f"{calendar_url}/v1/{tenant}/appointments",
        params={"day": tomorrows[0].isoformat(), "days": len(tomorrows)},
        headers=auth,
    )
    assert listed.status_code == 200, listed.text
    starts = {datetime.combine(day, at, tzinfo=zone) for day in tomorrows}
    appointments: list[dict[str, Any]] = listed.json()["appointments"]
    return [a for a in appointments if datetime.fromisoformat(a["start"]) in starts]


def _read_output(proc: subprocess.Popen[str], sink: list[str], ready: threading.Event) -> None:
    # Drained for the whole run: a full pipe would stall every service's logging.
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append(line)
        if line.startswith(READY_LINE):
            ready.set()
    ready.set()


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, otlp_receiver: OtlpReceiver) -> Iterator[Mesh]:
    data_dir = tmp_path_factory.mktemp("mesh")
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicemesh.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--otlp",
            otlp_receiver.endpoint,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "VOICEMESH_LOG_LEVEL": "INFO"},
    )
    output: list[str] = []
    ready = threading.Event()
    reader = threading.Thread(target=_read_output, args=(launcher, output, ready), daemon=True)
    reader.start()
    try:
        ready.wait(90)
        state_file = data_dir / "stack.json"
        if launcher.poll() is not None or not state_file.exists():
            pytest.fail("the mesh did not come up:\n" + "".join(output[-60:]))
        state: dict[str, Any] = json.loads(state_file.read_text())
        secrets: dict[str, Any] = json.loads((data_dir / "secrets.json").read_text())
        yield Mesh(
            data_dir=data_dir,
            urls={c["name"]: c["url"] for c in state["components"]},
            api_keys=dict(secrets["api_keys"]),
            call_token_secret=str(secrets["call_token_secret"]),
            output=output,
        )
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)  # what Ctrl-C delivers: services drain
            try:
                launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
        reader.join(timeout=5)
        if launcher.stdout is not None:
            launcher.stdout.close()
