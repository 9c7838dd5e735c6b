"""The agent's tools and the audit trail, each against a raw baseline measured in the same run.

One embedded nats-server; the crm and calendar services run as their own processes on
SQLite (as ``make run`` runs them), and so does a bare nats-py echo responder. From one
client process, with 1 and with 20 concurrent callers, it measures the round trip of:

* a nats-py request to the echo responder with a tool request's body: the transport's share
  of every round trip (the baseline);
* ``crm.lookup_contact`` by phone (a read);
* ``calendar.book`` of a fresh slot (a write: appointment + reminder row, an appointment event
  and a tool event on JetStream).

At 20 callers the three cases take turns for ROUNDS rounds and the table shows the median of
each round's percentiles, so a burst of load from elsewhere on the machine moves one round,
not the figure. Before each measurement the crm's durable consumers are left to drain (every
booking and every tool call is an event the crm reads for contact history), so a case is
measured in steady state, not while the crm works off the previous case's events. "server
CPU" is the service process's own CPU time per call (from ``/proc``), a figure the machine's
load hardly moves. It leaves out the crm's reading of the events a call caused (a booking's
appointment event, recorded as history, and every call's tool event): the row "crm reading
what a book caused" is the crm's CPU per booking until it has caught up.

Then audit ingest, with ``bench/audit_ingest.py``'s own functions: raw JetStream publish
(nats-py, 256 in flight) as the baseline, and ``python -m voicemesh.audit`` draining a backlog
of lifecycle, tool and SMS events into its hash chain.

Run: ``uv run python bench/tools.py``. Writes ``bench/results/tools.json`` (keys such as
``lookup_p99_ms_c20``, ``book_p99_ms_c20``, ``echo_p99_ms_c20``, ``audit_events_per_s``,
``raw_js_publish_per_s``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from nats.aio.client import Client as NatsClient

sys.path.insert(0, str(Path(__file__).parent))
import audit_ingest
from _report import median, percentile, report

from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import ToolRequest
from voicemesh.common.runtime.tools import ToolClient
from voicemesh.testkit.embedded import free_port, start_nats
from voicemesh.testkit.events import audited_events
from voicemesh.testkit.mesh import nats_client

TENANT = "bench-homes"
PHONE = "+15555550142"
WARMUP = 50
SINGLE = 300  # calls per case with one caller
CONCURRENT = 20
ROUNDS = 3
PER_ROUND = 600  # calls per case and round with 20 callers
AUDIT_EVENTS = 6000
AIMS_MS = {"lookup": 10.0, "book": 25.0}
AIM_AUDIT_PER_S = 2000.0

ECHO = """
import asyncio, sys
from voicemesh.testkit.mesh import nats_client
async def main():
    nc = await nats_client(sys.argv[1])
    async def reply(msg):
        await msg.respond(msg.data)
    await nc.subscribe(sys.argv[2], cb=reply)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _start_service(
    module: str, env: dict[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    full = {**os.environ, **env, "VOICEMESH_HTTP_PORT": str(port), "VOICEMESH_LOG_LEVEL": "WARNING"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], env=full, stdout=out, stderr=subprocess.STDOUT
        )
    return proc, port


def _start_echo(url: str, subject: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", ECHO, url, subject], stdout=subprocess.PIPE)


async def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError((await asyncio.to_thread(log.read_text))[-2000:])
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"service on {port} not healthy")


def _cpu_s(pid: int | None) -> float:
    """CPU time (user + system) of process ``pid``, or of this process for ``None``."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """Latencies of one case at one concurrency, over one or more rounds."""

    latencies: list[list[float]] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    failures: int = 0
    cpu_s: float = 0.0
    #: The crm's CPU from the start of a measurement until it has read the events it caused.
    crm_cpu_s: float = 0.0

    @property
    def calls(self) -> int:
        return sum(len(r) for r in self.latencies)

    def pct(self, p: float) -> float:
        """The median over rounds of each round's ``p``-th percentile."""
        return median([percentile(r, p) for r in self.latencies])


async def _settle(client: NatsClient, timeout: float = 30.0) -> None:
    """Wait until the crm's durable consumers have nothing left to read or ack."""
    js = client.jetstream()
    durables = [
        (spec.stream, spec.durable("*"))
        for spec in (streams.consumer("crm", "calls"), streams.consumer("crm", "events"))
    ]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = [await js.consumer_info(stream, durable) for stream, durable in durables]
        if all(not i.num_pending and not i.num_ack_pending for i in infos):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the crm did not work off its event backlog in time")


async def _measure(
    call: Callable[[int], Awaitable[bool]], concurrency: int, total: int, run: Run, pid: int | None
) -> None:
    latencies: list[float] = []
    counter = iter(range(total))

    async def caller() -> None:
        for n in counter:
            start = time.perf_counter()
            ok = await call(n)
            latencies.append((time.perf_counter() - start) * 1000)
            run.failures += not ok

    cpu = _cpu_s(pid)
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    run.rates.append(total / (time.perf_counter() - started))
    run.cpu_s += _cpu_s(pid) - cpu
    run.latencies.append(latencies)


def _slots() -> Iterator[datetime]:
    """Fresh 5-minute slots from tomorrow on, as the calendar below is configured."""
    zone = ZoneInfo("America/New_York")
    day = datetime.now(zone).date() + timedelta(days=1)
    while True:
        start = datetime.combine(day, dtime(0, 0), tzinfo=zone)
        yield from ((start + timedelta(minutes=5 * i)).astimezone(UTC) for i in range(280))
        day += timedelta(days=1)


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vm-bench-tools-") as tmp:
        work = Path(tmp)
        server = start_nats(work / "nats")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            await _run(server.url, work, procs)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            server.stop()


async def _run(url: str, work: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    load = os.getloadavg()[0]
    client: NatsClient = await nats_client(url)
    await streams.apply(client.jetstream())
    common = {"VOICEMESH_NATS_URL": url, "VOICEMESH_TENANTS": f"{TENANT}:real_estate"}
    crm_proc, crm_port = _start_service(
        "voicemesh.crm",
        {**common, "VOICEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'crm.db'}"},
        work / "crm.log",
    )
    cal_proc, cal_port = _start_service(
        "voicemesh.calendar",
        {
            **common,
            "VOICEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'calendar.db'}",
            "VOICEMESH_OPEN_TIME": "00:00",
            "VOICEMESH_CLOSE_TIME": "23:59",
            "VOICEMESH_SLOT_MINUTES": "5",
            "VOICEMESH_REMINDER_POLL_S": "0",
        },
        work / "calendar.log",
    )
    echo_subject = subjects.tool(TENANT, "echo", "echo")
    echo = _start_echo(url, echo_subject)
    procs.extend([crm_proc, cal_proc, echo])
    await _wait_healthy(crm_port, crm_proc, work / "crm.log")
    await _wait_healthy(cal_port, cal_proc, work / "calendar.log")
    assert echo.stdout is not None
    await asyncio.to_thread(echo.stdout.readline)

    tools = ToolClient(client, source="bench")
    seeded = await tools.call(TENANT, "crm", "upsert_contact", {"name": "Bench", "phone": PHONE})
    assert seeded.ok, seeded.error
    body = (
        ToolRequest(
            tenant=TENANT,
            source="bench",
            service="crm",
            name="lookup_contact",
            arguments={"phone": PHONE},
        )
        .model_dump_json()
        .encode()
    )
    slots = _slots()

    async def bare_echo(_n: int) -> bool:
        reply = await client.request(echo_subject, body, timeout=5)
        return len(reply.data) == len(body)

    async def lookup(_n: int) -> bool:
        return (await tools.call(TENANT, "crm", "lookup_contact", {"phone": PHONE})).ok

    async def book(_n: int) -> bool:
        start = next(slots)
        args: dict[str, Any] = {
            "start": start.isoformat(),
            "name": "Bench",
            "phone": PHONE,
            "idempotency_key": f"bench-{start:%Y%m%d%H%M}",
        }
        return (await tools.call(TENANT, "calendar", "book", args)).ok

    cases: dict[str, tuple[Callable[[int], Awaitable[bool]], int | None]] = {
        "echo": (bare_echo, echo.pid),
        "lookup": (lookup, crm_proc.pid),
        "book": (book, cal_proc.pid),
    }
    for call, _pid in cases.values():
        await _measure(call, 1, WARMUP, Run(), None)
    # The services freeze their startup heap (see their ``__main__``); so does this client,
    # or a full collection of its own (~70 ms) would land in some round's p99 as server time.
    gc.collect()
    gc.freeze()
    runs: dict[tuple[str, int], Run] = {}

    async def measure(key: str, callers: int, total: int) -> None:
        call, pid = cases[key]
        run = runs.setdefault((key, callers), Run())
        await _settle(client)
        crm_cpu = _cpu_s(crm_proc.pid)
        await _measure(call, callers, total, run, pid)
        await _settle(client)
        run.crm_cpu_s += _cpu_s(crm_proc.pid) - crm_cpu

    for key in cases:
        await measure(key, 1, SINGLE)
    for _round in range(ROUNDS):
        for key in cases:
            await measure(key, CONCURRENT, PER_ROUND)
    await client.drain()

    publish, ingest = await _audit(url, work)
    _report_all(runs, publish, ingest, load)


async def _audit(url: str, work: Path) -> tuple[float, float]:
    """Raw JetStream publish and audit ingest, with ``bench/audit_ingest.py``'s functions."""
    # Its module constant sizes the backlog; a smaller one keeps this run within a minute.
    audit_ingest.EVENTS = AUDIT_EVENTS
    nc = await nats_client(url)
    try:
        publish = await audit_ingest.publish_all(
            nc, audited_events("raw-0", AUDIT_EVENTS, tag="p0")
        )
        ingest = await audit_ingest.audit_ingest(
            nc, f"sqlite+aiosqlite:///{work / 'audit.db'}", url, "bench-audit", work, "i0"
        )
    finally:
        await nc.drain()
    return publish, ingest


NAMES = {
    "echo": "nats-py echo (baseline)",
    "lookup": "crm.lookup_contact",
    "book": "calendar.book",
}


def _report_all(
    runs: dict[tuple[str, int], Run], publish: float, ingest: float, load: float
) -> None:
    rows: list[list[Any]] = []
    figures: dict[str, Any] = {}
    for (key, callers), run in runs.items():
        p50, p99 = run.pct(50), run.pct(99)
        echo_p50 = runs[("echo", callers)].pct(50)
        aim = AIMS_MS.get(key)
        cpu_us = run.cpu_s / run.calls * 1e6
        rows.append(
            [NAMES[key], callers, run.calls, run.failures, round(p50, 2), round(p99, 2),
             round(p50 / echo_p50, 1), round(median(run.rates)), round(cpu_us),
             f"p99 <= {aim:g}" if aim and callers == CONCURRENT else "",
             ("yes" if p99 <= aim else "no") if aim and callers == CONCURRENT else ""]
        )  # fmt: skip
        figures[f"{key}_p50_ms_c{callers}"] = round(p50, 3)
        figures[f"{key}_p99_ms_c{callers}"] = round(p99, 3)
        figures[f"{key}_per_s_c{callers}"] = round(median(run.rates), 1)
        figures[f"{key}_failures_c{callers}"] = run.failures
        figures[f"{key}_server_cpu_us_per_call_c{callers}"] = round(cpu_us, 1)
        # Everything the crm spent per call, its event consumers included (for book: the
        # appointment event it records as history, and the tool event it reads and skips).
        figures[f"{key}_crm_cpu_us_per_call_c{callers}"] = round(run.crm_cpu_s / run.calls * 1e6)
    crm_per_book = figures[f"book_crm_cpu_us_per_call_c{CONCURRENT}"]
    rows.append(["  crm reading what a book caused", CONCURRENT, "", "", "", "", "", "",
                 crm_per_book, "", ""])  # fmt: skip
    rows.append(["raw JetStream publish (baseline)", "", AUDIT_EVENTS, "", "", "", "",
                 round(publish), "", "", ""])  # fmt: skip
    met = "yes" if ingest >= AIM_AUDIT_PER_S else "no"
    rows.append(["audit ingest (SQLite)", "", AUDIT_EVENTS, "", "", "", "", round(ingest),
                 "", f">= {AIM_AUDIT_PER_S:g}/s", met])  # fmt: skip
    report(
        "tools",
        ["case", "callers", "calls", "failed", "p50 ms", "p99 ms", "p50/echo", "per s",
         "server CPU us/call", "aim", "met"],
        rows,
        {
            **figures,
            "audit_events_per_s": round(ingest, 1),
            "raw_js_publish_per_s": round(publish, 1),
            "audit_to_publish_ratio": round(ingest / publish, 3),
            "aims": {
                "lookup_p99_ms_c20": AIMS_MS["lookup"],
                "book_p99_ms_c20": AIMS_MS["book"],
                "audit_events_per_s": AIM_AUDIT_PER_S,
            },
            "rounds_c20": ROUNDS,
            "load_average_1m_at_start": round(load, 2),
            "database": "sqlite",
        },
    )  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
