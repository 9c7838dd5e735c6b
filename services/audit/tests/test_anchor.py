"""Anchoring the chain: an INSERT-only writer role, signed heads, verify against them.

A chain that only links to itself can be rewritten end to end by whoever can write its
table: every row changed and every hash recomputed verifies. A head signed earlier, kept
where the table's writer cannot reach, pins the hash at its position; a rewrite below it
shows, and a head signed by any other key is refused.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from subprocess import CompletedProcess

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NatsClient
from sqlalchemy import update

from voicemesh.audit.anchor import (
    AuditHeadSigned,
    HeadSigner,
    fetch_heads,
    public_key_pem,
    sign_head,
    signature_valid,
)
from voicemesh.audit.chain import ChainEntry
from voicemesh.audit.models import HEAD, LOG, AuditRecord
from voicemesh.audit.store import AuditStore, RecordQuery
from voicemesh.audit.verify import verify_chain
from voicemesh.common.contracts import streams
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.publisher import JetStreamPublisher
from voicemesh.common.runtime.settings import NatsSettings

TENANT = "acme"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    async with Database(database_url) as db:
        yield AuditStore(db)


def _verify(database_url: str, *extra: str, cli: str = "voicemesh.audit") -> CompletedProcess[str]:
    """The verifier as operators run it: ``python -m voicemesh.audit verify`` or, with
    ``cli="voicemesh.cli"``, ``voicemesh audit verify``."""
    command = ["verify"] if cli == "voicemesh.audit" else ["audit", "verify"]
    return subprocess.run(
        [sys.executable, "-m", cli, *command, "--database-url", database_url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _write_keys(tmp_path: Path, key: Ed25519PrivateKey, name: str) -> Path:
    public = tmp_path / f"{name}.pub.pem"
    public.write_bytes(public_key_pem(key.public_key()))
    return public


def _write_heads(tmp_path: Path, *heads: AuditHeadSigned) -> Path:
    path = tmp_path / "heads.jsonl"
    path.write_text("".join(h.model_dump_json() + "\n" for h in heads))
    return path


async def _rows(store: AuditStore) -> list[AuditRecord]:
    return await store.records(RecordQuery(TENANT, limit=10_000))


async def _signed_chain(
    store: AuditStore, make_entry: Callable[..., ChainEntry], key: Ed25519PrivateKey, n: int
) -> AuditHeadSigned:
    await store.append([make_entry(TENANT) for _ in range(n)])
    last = (await _rows(store))[-1]
    return sign_head(key, TENANT, last.seq, last.hash, at=datetime.now(UTC))


async def test_whole_chain_rewrite_with_recomputed_head_is_detected(
    database_url: str,
    store: AuditStore,
    make_entry: Callable[..., ChainEntry],
    tmp_path: Path,
    rewrite_chain: Callable[[Database, str], Awaitable[None]],
) -> None:
    key = Ed25519PrivateKey.generate()
    public = _write_keys(tmp_path, key, "audit")
    early = await _signed_chain(store, make_entry, key, 4)
    late = await _signed_chain(store, make_entry, key, 3)  # seq 7
    heads = _write_heads(tmp_path, early, late)
    before = _verify(database_url, "--public-key", str(public), "--signed-heads", str(heads))
    assert before.returncode == 0, before.stdout + before.stderr
    assert "matches the head signed at" in before.stdout

    await rewrite_chain(store.db, TENANT)
    # The chain alone cannot tell: every row links to the one before and the head agrees.
    alone = await verify_chain(store.db, TENANT)
    assert alone.ok, alone.problem
    plain = _verify(database_url, "--tenant", TENANT)
    assert plain.returncode == 0 and plain.stdout.startswith(f"OK {TENANT}: 7 rows")

    anchored = await verify_chain(store.db, TENANT, anchors=[early, late])
    assert not anchored.ok and anchored.first_bad_seq == 1
    assert "rewritten" in anchored.problem and "seq 1..4" in anchored.problem

    bad = _verify(database_url, "--public-key", str(public), "--signed-heads", str(heads))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"FAILED {TENANT}:" in bad.stdout and "rewritten" in bad.stdout
    assert f"signed at {early.signed_at}" in bad.stdout


async def test_rows_cut_below_a_signed_head_are_detected(
    store: AuditStore, make_entry: Callable[..., ChainEntry]
) -> None:
    """Cutting the end and moving the head back verifies alone; not against a signed head."""
    key = Ed25519PrivateKey.generate()
    head = await _signed_chain(store, make_entry, key, 5)
    rows = await _rows(store)
    async with store.db.session() as session, session.begin():
        await session.execute(LOG.delete().where(LOG.c.tenant == TENANT, LOG.c.seq > 3))
        await session.execute(
            update(HEAD).where(HEAD.c.tenant == TENANT).values(seq=3, hash=rows[2].hash)
        )
    assert (await verify_chain(store.db, TENANT)).ok
    report = await verify_chain(store.db, TENANT, anchors=[head])
    assert not report.ok and report.first_bad_seq == 4
    assert "rows seq 4..5 were removed" in report.problem


async def test_a_forged_signed_head_is_refused(
    database_url: str,
    store: AuditStore,
    make_entry: Callable[..., ChainEntry],
    tmp_path: Path,
    rewrite_chain: Callable[[Database, str], Awaitable[None]],
) -> None:
    ours, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    public = _write_keys(tmp_path, ours, "audit")
    genuine = await _signed_chain(store, make_entry, ours, 3)
    await rewrite_chain(store.db, TENANT)
    last = (await _rows(store))[-1]
    # Whoever rewrote the chain signs its new head with a key of their own...
    forged = sign_head(theirs, TENANT, last.seq, last.hash, at=datetime.now(UTC))
    heads = _write_heads(tmp_path, forged)
    out = _verify(
        database_url, "--public-key", str(public), "--signed-heads", str(heads), cli="voicemesh.cli"
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "signature" in out.stdout and "does not verify" in out.stdout
    # ...or alters a genuine head to match: the signature no longer covers it.
    altered = genuine.model_copy(update={"head_hash": last.hash})
    out = _verify(
        database_url,
        "--public-key",
        str(public),
        "--signed-heads",
        str(_write_heads(tmp_path, altered)),
    )
    assert out.returncode == 1 and "does not verify" in out.stdout, out.stdout + out.stderr


async def test_verify_with_a_key_needs_a_signed_head_of_every_tenant(
    database_url: str,
    store: AuditStore,
    make_entry: Callable[..., ChainEntry],
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    head = await _signed_chain(store, make_entry, key, 2)
    await store.append([make_entry("homes")])
    public = _write_keys(tmp_path, key, "audit")
    out = _verify(
        database_url,
        "--public-key",
        str(public),
        "--signed-heads",
        str(_write_heads(tmp_path, head)),
    )
    assert out.returncode == 1
    assert f"OK {TENANT}: 2 rows" in out.stdout
    assert "FAILED homes: no signed head" in out.stdout


def _schema_sql(database: str, writer: str) -> str:
    """What ``make deploy`` pipes into ``psql`` as postgres (deploy/k8s/deploy.sh)."""
    args = ["schema", "--database", database, "--writer", writer]
    out = subprocess.run(
        [sys.executable, "-m", "voicemesh.audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


async def test_the_writer_role_may_insert_but_never_change_or_remove_rows(
    postgres_url: str, make_entry: Callable[..., ChainEntry]
) -> None:
    """The SQL ``make deploy`` runs, on a real PostgreSQL: the audit service's role may
    INSERT and SELECT, nothing more, and the tenant's shared role loses the tables it made."""
    admin = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    server, database = admin.rsplit("@", 1)[1], admin.rsplit("/", 1)[1]
    suffix = uuid.uuid4().hex[:8]
    tenant_role, writer = f"vm_t_{suffix}", f"vm_t_{suffix}_audit"

    def url(role: str, driver: str = "postgresql") -> str:
        return f"{driver}://{role}:pw@{server}"

    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f"CREATE ROLE \"{tenant_role}\" LOGIN PASSWORD 'pw'")
        await conn.execute(f'GRANT CREATE ON SCHEMA public TO "{tenant_role}"')
        # Before this change the service made its tables as the tenant's shared role.
        async with Database(url(tenant_role, "postgresql+asyncpg")) as before:
            await AuditStore(before).append([make_entry(TENANT) for _ in range(2)])
        await conn.execute(f"CREATE ROLE \"{writer}\" LOGIN PASSWORD 'pw'")
        for _ in range(2):  # every deploy runs it again
            await conn.execute(_schema_sql(database, writer))
    finally:
        await conn.close()

    try:
        # The service as deployed: tables already there, its own role, appends and reads.
        async with Database(url(writer, "postgresql+asyncpg")) as db:
            store = AuditStore(db)
            await store.append([make_entry(TENANT)])
            await store.append([make_entry(TENANT)])
            assert (await verify_chain(db, TENANT)).rows == 4
        for role in (writer, tenant_role):
            raw = await asyncpg.connect(url(role))
            try:
                for statement in (
                    "UPDATE audit_log SET payload = '{}' WHERE seq = 2",
                    "DELETE FROM audit_log WHERE seq = 4",
                    "TRUNCATE audit_log",
                    "DROP TABLE audit_log",
                    "ALTER TABLE audit_log DISABLE TRIGGER ALL",
                ):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await raw.execute(statement)
            finally:
                await raw.close()
    finally:
        conn = await asyncpg.connect(admin)
        try:
            assert await conn.fetchval("SELECT count(*) FROM audit_log") == 4
            for role in (writer, tenant_role):
                await conn.execute(f'DROP OWNED BY "{role}"')
                await conn.execute(f'DROP ROLE "{role}"')
        finally:
            await conn.close()


async def test_the_signer_signs_moved_heads_once_and_never_a_rewritten_chain(
    nats: NatsClient,
    nats_url: str,
    unique: Callable[[str], str],
    store: AuditStore,
    make_entry: Callable[..., ChainEntry],
    rewrite_chain: Callable[[Database, str], Awaitable[None]],
) -> None:
    tenant = unique("t")
    await streams.apply(nats.jetstream(), tenants=[tenant], services={"audit"})
    key = Ed25519PrivateKey.generate()
    publisher = JetStreamPublisher(nats)
    signer = HeadSigner(store.db, publisher, key, tenants=[tenant], interval_s=60)
    try:
        await store.append([make_entry(tenant) for _ in range(3)])
        [first] = await signer.sign_round()
        assert (first.tenant, first.seq) == (tenant, 3)
        assert signature_valid(first, key.public_key())
        assert await signer.sign_round() == []  # the head has not moved
        await store.append([make_entry(tenant)])
        [second] = await signer.sign_round()
        assert second.seq == 4

        await rewrite_chain(store.db, tenant)
        await store.append([make_entry(tenant)])
        assert await signer.sign_round() == [], "a rewritten chain must not be signed"
    finally:
        await publisher.drain()
    stored = await fetch_heads(NatsSettings(nats_urls=[nats_url]), tenant)
    assert stored == [first, second]
