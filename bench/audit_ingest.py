"""How fast the audit service records events, next to raw JetStream in the same run.

Against one embedded nats-server and a SQLite file, each round measures:

* raw JetStream publish (nats-py, 256 in flight): the rate events can be produced;
* raw JetStream pull consume (nats-py ``fetch(250)`` + ack): the ceiling for any consumer;
* chain append alone (``AuditStore.append`` in batches of 250): the database's share;
* audit ingest end to end: ``python -m voicemesh.audit`` as a real process draining a
  backlog of lifecycle, tool and SMS events into the hash chain, ack after commit.

Run: ``uv run python bench/audit_ingest.py``. The table shows medians of ROUNDS rounds and
the ratio to raw JetStream publish; ``bench/results/audit_ingest.json`` has
``audit_events_per_s`` and ``raw_js_publish_per_s``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).parent))
from _report import median, report

from voicemesh.audit.chain import ChainEntry, canonical_json
from voicemesh.audit.models import LOG
from voicemesh.audit.store import AuditStore
from voicemesh.common import Envelope
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.runtime.db import Database
from voicemesh.testkit.embedded import free_port, start_nats
from voicemesh.testkit.events import audited_events
from voicemesh.testkit.mesh import nats_client, publish_events

ROUNDS = 3
EVENTS = 10000
BATCH = 250


async def publish_all(nc: NatsClient, events: list[tuple[str, Envelope]]) -> float:
    start = time.perf_counter()
    await publish_events(nc, events, in_flight=256)
    return len(events) / (time.perf_counter() - start)


async def raw_consume(nc: NatsClient, tenant: str, n: int, durable: str) -> float:
    js = nc.jetstream()
    await js.add_consumer(
        "CALLS",
        ConsumerConfig(durable_name=durable, filter_subject=subjects.call_lifecycle(tenant, "*")),
    )
    sub = await js.pull_subscribe_bind(durable, "CALLS")
    got = 0
    start = time.perf_counter()
    while got < n:
        for msg in await sub.fetch(BATCH, timeout=5):
            await msg.ack()
            got += 1
    return n / (time.perf_counter() - start)


async def chain_append(url: str, tenant: str, n: int) -> float:
    db = Database(url)
    await db.create_all()
    store = AuditStore(db)
    entries = [
        ChainEntry(
            tenant,
            f"e{i}",
            "call.connected",
            f"c{i}",
            "bench",
            f"s{i}",
            "2030-01-01T00:00:00.000000Z",
            canonical_json({"i": i, "pad": "x" * 300}),
        )
        for i in range(n)
    ]
    start = time.perf_counter()
    for i in range(0, n, BATCH):
        await store.append(entries[i : i + BATCH])
    rate = n / (time.perf_counter() - start)
    await db.close()
    return rate


async def _count(db: Database, tenant: str) -> int:
    async with db.session() as session:
        stmt = select(func.count()).select_from(LOG).where(LOG.c.tenant == tenant)
        return int((await session.execute(stmt)).scalar_one())


async def audit_ingest(
    nc: NatsClient, url: str, nats_url: str, tenant: str, tmp: Path, tag: str
) -> float:
    """Backlog first, then start the service: measures draining, not startup or publishing."""
    await streams.apply(nc.jetstream(), tenants=[tenant], services={"audit"})
    await publish_all(nc, audited_events(tenant, EVENTS, tag=tag))
    port = free_port()
    env = {
        **os.environ,
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_TENANT": tenant,
        "VOICEMESH_TENANTS": f"{tenant}:salon",
        "VOICEMESH_DATABASE_URL": url,
        "VOICEMESH_HTTP_PORT": str(port),
        "VOICEMESH_LOG_LEVEL": "WARNING",
    }
    log = (tmp / f"audit-{tag}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicemesh.audit", env=env, stdout=log, stderr=subprocess.STDOUT
    )
    db = Database(url)
    try:
        deadline = time.monotonic() + 60
        first_at, first_count = 0.0, 0
        while time.monotonic() < deadline:
            try:
                count = await _count(db, tenant)
            except Exception:  # tables not created yet
                count = 0
            now = time.perf_counter()
            if count and not first_at:
                first_at, first_count = now, count
            if count >= EVENTS:
                return (EVENTS - first_count) / (now - first_at)
            await asyncio.sleep(0.01)
        raise TimeoutError("audit did not record the backlog in time")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
        log.close()
        await db.close()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        server = start_nats(tmp / "nats")
        nc = await nats_client(server.url)
        await streams.apply(nc.jetstream(), services=set())
        results: dict[str, list[float]] = {"publish": [], "consume": [], "append": [], "ingest": []}
        try:
            for r in range(ROUNDS):
                tenant = f"bench-{r}"
                raw = audited_events(f"raw-{r}", EVENTS, tag=f"p{r}")
                lifecycle = sum(1 for subject, _ in raw if streams.stream_for(subject) == "CALLS")
                results["publish"].append(await publish_all(nc, raw))
                results["consume"].append(await raw_consume(nc, f"raw-{r}", lifecycle, f"raw-{r}"))
                results["append"].append(
                    await chain_append(f"sqlite+aiosqlite:///{tmp}/append-{r}.db", tenant, EVENTS)
                )
                results["ingest"].append(
                    await audit_ingest(
                        nc,
                        f"sqlite+aiosqlite:///{tmp}/audit-{r}.db",
                        server.url,
                        tenant,
                        tmp,
                        f"i{r}",
                    )
                )
        finally:
            await nc.drain()
            server.stop()
    base = median(results["publish"])
    labels = {
        "publish": "raw JetStream publish (baseline)",
        "consume": "raw JetStream fetch+ack",
        "append": "chain append only (SQLite)",
        "ingest": "audit service ingest (SQLite)",
    }
    rows = [[labels[k], median(v), median(v) / base] for k, v in results.items()]
    report(
        "audit_ingest",
        ["case", "events/s (median)", "ratio to publish"],
        rows,
        {
            "events_per_round": EVENTS,
            "rounds": ROUNDS,
            "audit_events_per_s": median(results["ingest"]),
            "raw_js_publish_per_s": base,
            "raw_js_consume_per_s": median(results["consume"]),
            "chain_append_per_s": median(results["append"]),
            "samples": results,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
