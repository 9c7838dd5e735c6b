"""The audit service as a real process on a real JetStream.

A SIGKILL in the middle of a burst loses nothing and records nothing twice; malformed
events go to the dead-letter subject while the service keeps recording; the HTTP API
answers by call and by time range, behind the tenant's API key.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NatsClient
from sqlalchemy import func, select, update

from voicemesh.audit.anchor import (
    AuditHeadSigned,
    head_subject,
    private_key_pem,
    public_key_pem,
    signature_valid,
)
from voicemesh.audit.models import LOG
from voicemesh.common import (
    CallConnected,
    CallEnded,
    DeadLetter,
    EndReason,
    Envelope,
)
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.runtime.db import Database
from voicemesh.testkit.events import audited_events
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess, wait_until
from voicemesh.testkit.mesh import publish_events

API_KEY = "audit-test-key-0123456789"
BURST = 5000


def _verify(
    database_url: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicemesh.audit", "verify", "--database-url", database_url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


async def _count(db: Database, tenant: str) -> int:
    async with db.session() as session:
        stmt = select(func.count()).select_from(LOG).where(LOG.c.tenant == tenant)
        return int((await session.execute(stmt)).scalar_one())


async def _settled(nats: NatsClient, tenant: str) -> bool:
    js = nats.jetstream()
    for purpose, stream in (("calls", "CALLS"), ("events", "EVENTS"), ("sms", "SMS")):
        info = await js.consumer_info(stream, streams.consumer("audit", purpose).durable(tenant))
        if info.num_pending or info.num_ack_pending:
            return False
    return True


class _Audit:
    def __init__(self, processes: ProcessTracker, nats_url: str, tenant: str, db_url: str) -> None:
        self.env = {
            "VOICEMESH_NATS_URL": nats_url,
            "VOICEMESH_TENANT": tenant,
            "VOICEMESH_TENANTS": f"{tenant}:healthcare",
            "VOICEMESH_DATABASE_URL": db_url,
            "VOICEMESH_API_KEYS": f"{tenant}:{API_KEY}",
            "VOICEMESH_LOG_LEVEL": "INFO",
        }
        self.processes = processes

    async def start(self) -> ServiceProcess:
        proc = self.processes.python_module("voicemesh.audit", self.env, name="audit")
        await proc.wait_healthy(timeout=30)
        return proc


@pytest.fixture
async def tenant(nats: NatsClient, unique: Callable[[str], str]) -> str:
    name = unique("t")
    await streams.apply(nats.jetstream(), tenants=[name], services={"audit"})
    return name


async def test_sigkill_mid_burst_loses_nothing_and_records_nothing_twice(
    # on SQLite and on PostgreSQL
    nats: NatsClient,
    nats_url: str,
    processes: ProcessTracker,
    tenant: str,
    database_url: str,
) -> None:
    audit = _Audit(processes, nats_url, tenant, database_url)
    first = await audit.start()
    db = Database(database_url)
    events = audited_events(tenant, BURST)
    try:
        burst = asyncio.create_task(publish_events(nats, events))
        await wait_until(
            lambda: _at_least(db, tenant, 800), timeout=60, interval=0.02, what="800 recorded"
        )
        first.kill()  # SIGKILL: batches in flight are fetched but not acked, maybe committed
        at_kill = await _count(db, tenant)
        assert 0 < at_kill < BURST, "the kill must land in the middle of the burst"
        await burst

        await audit.start()
        await wait_until(lambda: _at_least(db, tenant, BURST), timeout=90, what="all events")
        await wait_until(lambda: _settled(nats, tenant), timeout=30, what="every message acked")

        async with db.session() as session:
            ids = list(
                (
                    await session.execute(select(LOG.c.event_id).where(LOG.c.tenant == tenant))
                ).scalars()
            )
        assert len(ids) == BURST
        assert set(ids) == {e.event_id for _, e in events}
    finally:
        await db.close()

    ok = _verify(database_url, "--tenant", tenant)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"OK {tenant}: {BURST} rows")

    victim_seq = 2500
    tampered = Database(database_url)
    try:
        async with tampered.session() as session, session.begin():
            victim = (
                await session.execute(
                    select(LOG.c.event_id).where(LOG.c.tenant == tenant, LOG.c.seq == victim_seq)
                )
            ).scalar_one()
            await session.execute(
                update(LOG)
                .where(LOG.c.tenant == tenant, LOG.c.seq == victim_seq)
                .values(payload=func.replace(LOG.c.payload, '"source":', '"source" :'))
            )
    finally:
        await tampered.close()
    bad = _verify(database_url)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"row seq {victim_seq} (event {victim}" in bad.stdout
    assert "changed" in bad.stdout


async def _at_least(db: Database, tenant: str, n: int) -> bool:
    return await _count(db, tenant) >= n


async def test_malformed_events_are_dead_lettered_and_recording_goes_on(
    nats: NatsClient,
    nats_url: str,
    processes: ProcessTracker,
    tenant: str,
    sqlite_url: str,
    unique: Callable[[str], str],
) -> None:
    js = nats.jetstream()
    dead = await js.subscribe(subjects.dead_letter(tenant), stream="DLQ")
    audit = await _Audit(processes, nats_url, tenant, sqlite_url).start()

    call = unique("c")
    lifecycle = subjects.call_lifecycle(tenant, call)
    bad = {
        "not-json": b'{"type": "call.connected", "tenant": ',
        "bad-reason": json.dumps(
            {
                "type": "call.ended",
                "tenant": tenant,
                "call_id": call,
                "source": "t",
                "reason": "nap",
            }
        ).encode(),
        "other-tenant": CallConnected(tenant="someone-else", call_id=call, source="t")
        .model_dump_json()
        .encode(),
    }
    for msg_id, body in bad.items():
        await js.publish(lifecycle, body, headers={"Nats-Msg-Id": msg_id})
    good = CallEnded(tenant=tenant, call_id=call, source="gateway", reason=EndReason.HANGUP)
    await js.publish(
        lifecycle, good.model_dump_json().encode(), headers={"Nats-Msg-Id": good.event_id}
    )
    # an event type newer than this service: recorded on its envelope, not dead-lettered
    future = {
        "type": "handoff.requested",
        "event_id": unique("e"),
        "tenant": tenant,
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": "agent",
        "to": "front-desk",
    }
    await js.publish(
        subjects.event(tenant, "handoff"),
        json.dumps(future).encode(),
        headers={"Nats-Msg-Id": future["event_id"]},
    )

    letters = []
    for _ in bad:
        msg = await dead.next_msg(timeout=15)
        letters.append(DeadLetter.model_validate_json(msg.data))
    assert all(d.subject == lifecycle and d.source == "audit" and d.reason for d in letters)
    reasons = " | ".join(d.reason for d in letters)
    assert "not JSON" in reasons and "reason" in reasons and "does not match" in reasons

    db = Database(sqlite_url)
    try:
        await wait_until(lambda: _at_least(db, tenant, 2), timeout=15, what="the good events")
        async with db.session() as session:
            types = set((await session.execute(select(LOG.c.event_type))).scalars())
        assert types == {"call.ended", "handoff.requested"}
    finally:
        await db.close()
    await wait_until(lambda: _settled(nats, tenant), timeout=15, what="nothing left to redeliver")
    assert audit.alive()


async def test_http_api_queries_by_call_and_time_range_behind_the_api_key(
    nats: NatsClient,
    nats_url: str,
    processes: ProcessTracker,
    tenant: str,
    sqlite_url: str,
) -> None:
    audit = await _Audit(processes, nats_url, tenant, sqlite_url).start()
    t0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    events: list[tuple[str, Envelope]] = []
    for i, call in enumerate(("call-a", "call-b", "call-a")):
        ev = CallConnected(
            tenant=tenant, call_id=call, source="gw", occurred_at=t0 + timedelta(minutes=i)
        )
        events.append((subjects.call_lifecycle(tenant, call), ev))
    await publish_events(nats, events)
    base = f"http://127.0.0.1:{audit.http_port}/v1/{tenant}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=5) as client:

        async def all_recorded() -> bool:
            r = await client.get(f"{base}/audit", headers=auth)
            return r.status_code == 200 and len(r.json()["records"]) == 3

        await wait_until(all_recorded, timeout=15, what="three records")

        by_call = (await client.get(f"{base}/calls/call-a/audit", headers=auth)).json()
        assert [r["event_id"] for r in by_call["records"]] == [
            events[0][1].event_id,
            events[2][1].event_id,
        ]
        assert by_call["records"][0]["event"]["type"] == "call.connected"

        window = {
            "since": (t0 + timedelta(seconds=30)).isoformat(),
            "until": (t0 + timedelta(minutes=2)).isoformat(),
        }
        ranged = (await client.get(f"{base}/audit", headers=auth, params=window)).json()
        assert [r["call_id"] for r in ranged["records"]] == ["call-b"]

        paged = (await client.get(f"{base}/audit", headers=auth, params={"limit": 2})).json()
        assert len(paged["records"]) == 2 and paged["next_after_seq"] == 2
        rest = (await client.get(f"{base}/audit", headers=auth, params={"after_seq": 2})).json()
        assert [r["seq"] for r in rest["records"]] == [3] and rest["next_after_seq"] is None

        verified = (await client.get(f"{base}/audit/verify", headers=auth)).json()
        assert verified == {
            "tenant": tenant,
            "ok": True,
            "rows": 3,
            "problem": "",
            "first_bad_seq": None,
        }

        assert (await client.get(f"{base}/audit")).status_code == 401
        wrong = {"Authorization": "Bearer not-the-key-0123456789"}
        assert (await client.get(f"{base}/audit", headers=wrong)).status_code == 401
        # Another tenant's path, served or not, answers the same: no tenant enumeration.
        other = f"http://127.0.0.1:{audit.http_port}/v1/not-served/audit"
        assert (await client.get(other, headers=auth)).status_code == 403
        backwards = {"since": window["until"], "until": window["since"]}
        assert (
            await client.get(f"{base}/audit", headers=auth, params=backwards)
        ).status_code == 400
        assert (
            await client.get(f"{base}/audit", headers=auth, params={"limit": 0})
        ).status_code == 422


async def test_the_service_signs_and_exports_its_head_and_verify_checks_against_it(
    nats: NatsClient,
    nats_url: str,
    processes: ProcessTracker,
    tenant: str,
    sqlite_url: str,
    tmp_path: Path,
    rewrite_chain: Callable[[Database, str], Awaitable[None]],
) -> None:
    """The key from a mounted file; heads on JetStream, outside the chain; a rewrite shows."""
    key = Ed25519PrivateKey.generate()
    (tmp_path / "private.pem").write_bytes(private_key_pem(key))
    public = tmp_path / "public.pem"
    public.write_bytes(public_key_pem(key.public_key()))
    audit = _Audit(processes, nats_url, tenant, sqlite_url)
    audit.env |= {
        "VOICEMESH_AUDIT_SIGNING_KEY_FILE": str(tmp_path / "private.pem"),
        "VOICEMESH_HEAD_INTERVAL_S": "0.2",
    }
    heads = await nats.jetstream().subscribe(head_subject(tenant), stream="EVENTS")
    await audit.start()
    await publish_events(nats, audited_events(tenant, 20))

    signed: list[int] = []  # the seqs of the heads signed while the 20 rows went in

    async def signed_at_20() -> AuditHeadSigned:
        while True:
            head = AuditHeadSigned.model_validate_json((await heads.next_msg(timeout=15)).data)
            signed.append(head.seq)
            if head.seq == 20:
                return head

    head = await asyncio.wait_for(signed_at_20(), timeout=30)
    assert head.tenant == tenant and signature_valid(head, key.public_key())
    db = Database(sqlite_url)
    try:
        await wait_until(lambda: _settled(nats, tenant), timeout=15, what="every message acked")
        assert await _count(db, tenant) == 20, "the signed heads stay out of the chain"
    finally:
        await db.close()

    env = {**os.environ, "VOICEMESH_NATS_URL": nats_url}
    anchored = ("--tenant", tenant, "--public-key", str(public), "--heads-from-nats")
    ok = _verify(sqlite_url, *anchored, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "seq 20 matches the head signed at" in ok.stdout

    tampered = Database(sqlite_url)
    try:
        await rewrite_chain(tampered, tenant)
    finally:
        await tampered.close()
    assert _verify(sqlite_url, "--tenant", tenant).returncode == 0  # the chain alone: fooled
    bad = _verify(sqlite_url, *anchored, env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    # The earliest signed head that covers a row narrows the damage down to its rows.
    earliest = min(seq for seq in signed if seq > 0)
    assert f"FAILED {tenant}: rows seq 1..{earliest} were rewritten" in bad.stdout
