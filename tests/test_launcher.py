"""``voicemesh up`` (what ``make run`` runs): the whole mesh up fast, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

UP_LINE = re.compile(r"voicemesh is up in (?P<secs>[0-9.]+)s")
ROW = re.compile(r"^\s{2}(?P<name>\S+)\s+(?P<url>\S+)\s+(?P<pid>\d+)\s*$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited; only its entry remains until reaped
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1].split()[0] != "Z"


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


async def test_up_starts_everything_healthy_in_15s_and_ctrl_c_leaves_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "stack"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "voicemesh.cli", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # As users run it: the suite's coverage tracing (inherited through COVERAGE_*)
        # would time the tracer, not the stack.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")},
            "PYTHONUNBUFFERED": "1",
        },
    )
    rows: dict[str, tuple[str, int]] = {}
    lines: list[str] = []
    try:
        assert launcher.stdout is not None
        deadline = time.monotonic() + 60
        started = None
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(launcher.stdout.readline)
            if not line:
                break
            lines.append(line)
            if match := UP_LINE.search(line):
                started = float(match["secs"])
            elif started is not None and (row := ROW.match(line)):
                rows[row["name"]] = (row["url"], int(row["pid"]))
            elif started is not None and line.startswith("Press Ctrl-C"):
                break
        assert started is not None, "".join(lines[-50:])
        assert started < 15.0, f"the stack took {started}s to come up"

        services = ["gateway", "push", "agent", "crm", "calendar", "sms", "audit", "transcript"]
        assert set(services) <= set(rows)
        assert next(iter(rows)) == "demo" and rows["demo"][0].endswith("/demo")
        async with httpx.AsyncClient(timeout=5) as client:
            for name in services:
                response = await client.get(rows[name][0] + "/healthz")
                assert response.status_code == 200, name
        for name in ("nats", "redis"):
            assert _alive(rows[name][1])

        launcher.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        remaining = await asyncio.to_thread(launcher.communicate, timeout=60)
        assert launcher.returncode == 0, remaining[0][-3000:]
        assert "nothing left running" in remaining[0]
        for name, (_, pid) in rows.items():
            assert not _alive(pid), f"{name} (pid {pid}) is still running"
        assert _processes_mentioning(str(data_dir)) == []
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=10)
        if launcher.stdout is not None:
            launcher.stdout.close()
        for _, pid in rows.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
