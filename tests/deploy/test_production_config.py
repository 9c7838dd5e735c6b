"""The production configuration runs as shipped: push on its deployed NATS user, Redis
fenced per tenant by the generated ACL, TLS with the certificates ``certs.py`` issues, and
the rendered manifests with demo data off, TLS everywhere and TURN locked down."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import pwd
import secrets
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError
from sqlalchemy import text

from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.errors import UnavailableError
from voicemesh.common.runtime.connection import connect
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.ratelimit import SlidingWindowLimiter
from voicemesh.common.runtime.settings import NatsSettings
from voicemesh.testkit.embedded import (
    find_binary,
    free_port,
    start_nats,
    start_postgres,
    wait_for_port,
)
from voicemesh.testkit.fixtures import ProcessTracker
from voicemesh.testkit.mesh import nats_client

from ..conftest import K8S, DeployedNats

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def redis_acl(k8s: ModuleType) -> ModuleType:
    """``deploy/k8s/redis_acl.py`` (importable once ``k8s`` has loaded the deploy scripts)."""
    return importlib.import_module("deploy.k8s.redis_acl")


@pytest.fixture(scope="module")
def certs(k8s: ModuleType) -> ModuleType:
    return importlib.import_module("deploy.k8s.certs")


# -- push: per-tenant consumers on its deployed NATS user -------------------------------------


def test_push_may_use_exactly_the_consumers_it_opens(k8s: ModuleType) -> None:
    """The all-tenant PUSH work queue, and one lifecycle durable per deployed tenant; not the
    unused all-tenant ``push-calls``, no per-tenant ``push-jobs``, no filterless create."""
    nats_auth = k8s.nats_auth
    tenants = nats_auth.deployed_tenants()
    push = next(u for u in nats_auth.parse(nats_auth.AUTH_CONF.read_text()) if u.name == "push")
    consumer_subjects = {s for s in push.publish if s.startswith("$JS.")}
    expected = {
        "$JS.API.CONSUMER.INFO.PUSH.push-jobs",
        "$JS.API.CONSUMER.CREATE.PUSH.push-jobs.vm.>",
        "$JS.API.CONSUMER.MSG.NEXT.PUSH.push-jobs",
        "$JS.ACK.PUSH.push-jobs.>",
    }
    for tenant in tenants:
        expected |= {
            f"$JS.API.CONSUMER.INFO.CALLS.push-calls-{tenant}",
            f"$JS.API.CONSUMER.CREATE.CALLS.push-calls-{tenant}.vm.{tenant}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.CALLS.push-calls-{tenant}",
            f"$JS.ACK.CALLS.push-calls-{tenant}.>",
        }
    assert consumer_subjects == expected
    gateway = next(
        u for u in nats_auth.parse(nats_auth.AUTH_CONF.read_text()) if u.name == "gateway"
    )
    assert not any(s.startswith("$JS.") for s in gateway.publish)


@pytest.mark.slow
async def test_push_serving_every_tenant_starts_on_the_generated_auth_conf(
    deployed_nats: DeployedNats,
    k8s: ModuleType,
    redis_url: str,
    processes: ProcessTracker,
) -> None:
    """As deployed: ``VOICEMESH_TENANT=*``, every tenant of ``tenants.env``, the ``push`` user;
    it opens ``push-calls-<tenant>`` for each tenant itself and no permission is violated."""
    nats_auth = k8s.nats_auth
    tenants = nats_auth.deployed_tenants()
    admin = await nats_client(deployed_nats.url, identity=deployed_nats.identity("admin"))
    try:
        js = admin.jetstream()
        await streams.apply(js, services={"push"})  # what the streams job provisions
        env = {
            **deployed_nats.identity("push").env(),
            "VOICEMESH_NATS_URL": deployed_nats.url,
            "VOICEMESH_REDIS_URL": redis_url,
            "VOICEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{processes.log_dir / 'push'}.db",
            "VOICEMESH_TENANTS": nats_auth.read_env_file(nats_auth.TENANTS_ENV)[
                "VOICEMESH_TENANTS"
            ],
            "VOICEMESH_CALL_TOKEN_SECRET": secrets.token_urlsafe(36),
        }
        assert env["VOICEMESH_TENANT"] == "*"
        push = processes.python_module("voicemesh.push", env)
        await push.wait_healthy(timeout=60)
        for tenant in tenants:
            info = await js.consumer_info("CALLS", f"push-calls-{tenant}")
            assert info.config.filter_subject == subjects.call_lifecycle(tenant, "*")
    finally:
        await admin.drain()
    assert deployed_nats.server.log_path is not None
    log = deployed_nats.server.log_path.read_text()
    assert [line for line in log.splitlines() if "Violation" in line] == []


# -- Redis: one ACL user per tenant -----------------------------------------------------------


@contextlib.contextmanager
def _redis_with_acl(acl: str, tmp: Path) -> Iterator[int]:
    """A real ``redis-server`` loading ``acl`` as its ``--aclfile``, as the Redis pod does."""
    (tmp / "users.acl").write_text(acl)
    port = free_port()
    argv = [str(find_binary("redis-server")), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--aclfile", str(tmp / "users.acl")]
    with (tmp / "redis.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, 10, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_each_tenant_reaches_only_its_own_redis_keys(
    redis_acl: ModuleType, tmp_path: Path
) -> None:
    passwords = {u: secrets.token_hex(24) for u in ("admin", "gateway", "push", "acme", "beta")}
    with _redis_with_acl(redis_acl.render(passwords), tmp_path) as port:

        def client(user: str, db: int = 2) -> Redis:
            return Redis.from_url(f"redis://{user}:{passwords[user]}@127.0.0.1:{port}/{db}")

        acme, gateway, push = client("acme"), client("gateway", 0), client("push", 1)
        try:
            # Its own sending limit works (scripts included) ...
            own = SlidingWindowLimiter(acme, "sms", limit=2, window_s=60, fail_open=False)
            assert (await own.hit("acme")).allowed
            # ... another tenant's counters are refused by the ACL, not silently shared.
            with pytest.raises(UnavailableError):
                await own.hit("beta")
            # The gateway's registry (where each call's signaling goes) is out of reach.
            await gateway.hset("voicemesh:gateway:workers", "gw-1", "{}")
            for attempt in (
                acme.hgetall("voicemesh:gateway:workers"),
                acme.hset("voicemesh:gateway:call:c1", "worker", "evil"),
                acme.get("voicemesh:push:devices:beta:u1"),
                acme.scan(),
                acme.keys("*"),
                acme.flushall(),
                acme.script_flush(),
            ):
                with pytest.raises((NoPermissionError, ResponseError), match=r"(?i)permission"):
                    await attempt
            # The edge users reach their own keys and every tenant's rate limits.
            signaling = SlidingWindowLimiter(gateway, "call", limit=5, window_s=60)
            assert (await signaling.hit("beta")).allowed
            await push.set("voicemesh:push:devices:beta:u1", "[]")
            with pytest.raises(NoPermissionError):
                await push.get("voicemesh:gateway:workers")
            with pytest.raises(Exception, match=r"(?i)auth"):
                await Redis.from_url(f"redis://127.0.0.1:{port}/0").ping()
        finally:
            for c in (acme, gateway, push):
                await c.aclose()


def test_the_acl_key_prefixes_are_the_ones_the_services_use(redis_acl: ModuleType) -> None:
    from voicemesh.gateway import registry
    from voicemesh.push.calls import MARKER, CallStore
    from voicemesh.push.devices import DeviceRegistry

    gateway_keys, push_keys = redis_acl.EDGE_KEYS["gateway"][0], redis_acl.EDGE_KEYS["push"][0]
    assert f"{registry.PREFIX}:" == gateway_keys.rstrip("*")
    for key in (
        MARKER,
        CallStore.DEADLINES,
        CallStore._key("acme", "c1"),
        DeviceRegistry._cache_key("acme", "u1"),
    ):
        assert key.startswith(push_keys.rstrip("*")), key


# -- TLS -------------------------------------------------------------------------------------


async def test_nats_over_tls_with_the_issued_certificate(certs: ModuleType, tmp_path: Path) -> None:
    """The nats.conf ``tls`` block with a certificate ``certs.py`` issued: ``connect`` with
    the CA succeeds; a plain connection and one that does not trust the CA are refused."""
    ca_cert, ca_key = certs.make_ca("test CA")
    certs.write_server_certs(ca_cert, ca_key, tmp_path, {"tls": certs.SERVERS["nats"]})
    shipped = (K8S / "base" / "nats" / "nats.conf").read_text()
    block = shipped[shipped.index("\ntls {") : shipped.index("}", shipped.index("\ntls {")) + 1]
    (tmp_path / "nats.conf").write_text(block.replace("/etc/nats-tls/", f"{tmp_path}/tls/"))
    server = start_nats(tmp_path / "data", config_file=tmp_path / "nats.conf")
    try:
        port = server.port
        ca_file = str(tmp_path / "tls" / "ca.crt")
        trusted = NatsSettings(nats_urls=[f"tls://localhost:{port}"], nats_tls_ca_file=ca_file)
        client = await connect(trusted, name="tls-test")
        assert client.is_connected
        await client.close()
        # A client that skips TLS is told TLS is required; one that does not trust the
        # mesh's CA fails the handshake.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            info = json.loads((await reader.readline()).decode().removeprefix("INFO "))
            assert info["tls_required"] is True
            with pytest.raises(ssl.SSLCertVerificationError):
                await writer.start_tls(ssl.create_default_context(), server_hostname="localhost")
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    finally:
        server.stop()


# -- the rendered base -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(k8s: ModuleType) -> list[Doc]:
    docs: list[Doc] = k8s.render(K8S / "base")
    return docs


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


def _container(doc: Doc, name: str) -> Doc:
    found: Doc = next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)
    return found


def test_the_servers_speak_only_tls_with_the_certificate_secrets(base: list[Doc]) -> None:
    conf = _find(base, "ConfigMap", "nats-config-")["data"]["nats.conf"]
    cluster = conf[conf.index("cluster {") :]
    assert "\ntls {" in conf[: conf.index("cluster {")]  # clients
    assert "tls {" in cluster and "verify: true" in cluster  # routes, mutually verified
    nats = _find(base, "StatefulSet", "nats")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "nats-tls", "defaultMode": 0o440}} in nats

    redis = _container(_find(base, "Deployment", "redis"), "redis")
    args = redis["args"]
    assert args[args.index("--port") + 1] == "0"  # no clear-text port at all
    assert args[args.index("--tls-port") + 1] == "6379"
    assert args[args.index("--aclfile") + 1] == "/etc/redis/acl/users.acl"
    assert "--requirepass" not in args  # one ACL user per client instead

    postgres = _container(_find(base, "StatefulSet", "postgres"), "postgres")
    assert "ssl=on" in postgres["args"]
    hba = _find(base, "ConfigMap", "postgres-hba-")["data"]["pg_hba.conf"]
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert [r for r in rules if r[0] == "host"] == []  # TCP is hostssl or rejected
    assert all(r[-1] == "reject" for r in rules if r[0] == "hostnossl")
    assert "?ssl=verify-full" in (K8S / "deploy.sh").read_text()


def test_turn_relays_only_udp_and_only_to_the_gateways(base: list[Doc]) -> None:
    conf = _find(base, "ConfigMap", "coturn-config-")["data"]["turnserver.conf"]
    lines = [line.strip() for line in conf.splitlines() if not line.startswith("#")]
    assert "no-tcp-relay" in lines
    denied = {line.split("=", 1)[1] for line in lines if line.startswith("denied-peer-ip=")}
    assert "0.0.0.0-255.255.255.255" in denied
    for private in ("10.0.0.0-10.255.255.255", "172.16.0.0-172.31.255.255",
                    "192.168.0.0-192.168.255.255", "169.254.0.0-169.254.255.255"):  # fmt: skip
        assert private in denied
    allowed = [line.split("=", 1)[1] for line in lines if line.startswith("allowed-peer-ip=")]
    assert len(allowed) == 1  # the gateway pods' own range, and nothing else


def test_gateway_reaches_public_stun_but_no_private_address_on_3478(base: list[Doc]) -> None:
    media = _find(base, "NetworkPolicy", "gateway-media")["spec"]["egress"]
    stun = [
        rule
        for rule in media
        if rule["ports"] == [{"protocol": "UDP", "port": 3478}]
        and rule["to"][0].get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    ]
    assert len(stun) == 1
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(
        stun[0]["to"][0]["ipBlock"]["except"]
    )


def test_demo_paths_are_off_in_the_manifests(base: list[Doc], k8s: ModuleType) -> None:
    edge = _find(base, "ConfigMap", "edge-config-")["data"]
    assert edge["VOICEMESH_DEMO_ENABLED"] == "false"
    for overlay in k8s.overlays()[1:]:
        mesh = _find(k8s.render(overlay), "ConfigMap", "mesh-")["data"]
        assert mesh["VOICEMESH_SEED_DEMO_DATA"] == "false", overlay


async def test_postgres_takes_only_verified_tls_with_the_shipped_hba(
    certs: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL as ``postgres.yaml`` runs it (ssl on, the shipped ``pg_hba.conf``): a
    service URL ending ``?ssl=verify-full`` with ``PGSSLROOTCERT`` connects over TLS; without
    TLS, or trusting another CA, it is refused."""
    # Not under pytest's root-only temp dir: as root the server runs as the postgres user.
    data_dir = Path(tempfile.mkdtemp(prefix="voicemesh-pg-tls-"))
    server = start_postgres(data_dir)
    try:
        ca_cert, ca_key = certs.make_ca("test CA")
        tls = data_dir / "tls"
        certs.write_server_certs(ca_cert, ca_key, data_dir, {"tls": ["127.0.0.1"]})
        shutil.copy(K8S / "base" / "pg_hba.conf", tls / "pg_hba.conf")
        if os.geteuid() == 0:  # the server runs as the postgres user
            owner = pwd.getpwnam("postgres")
            for path in (tls, *tls.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        password = secrets.token_hex(16)
        admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres")
        try:
            for setting, value in [
                ("ssl", "on"),
                ("ssl_cert_file", tls / "tls.crt"),
                ("ssl_key_file", tls / "tls.key"),
                ("hba_file", tls / "pg_hba.conf"),
            ]:
                await admin.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
            await admin.execute(f"ALTER USER postgres PASSWORD '{password}'")
        finally:
            await admin.close()
        server.restart(timeout=30)

        url = f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{server.port}/postgres"
        monkeypatch.setenv("PGSSLROOTCERT", str(tls / "ca.crt"))
        assert await _ssl_in_use(f"{url}?ssl=verify-full") is True
        with pytest.raises(Exception, match=r"no encryption|pg_hba.conf rejects"):
            await _ssl_in_use(f"{url}?ssl=disable")
        other_ca, _ = certs.make_ca("another CA")
        (data_dir / "other.crt").write_bytes(other_ca)
        monkeypatch.setenv("PGSSLROOTCERT", str(data_dir / "other.crt"))
        with pytest.raises(ssl.SSLCertVerificationError):
            await _ssl_in_use(f"{url}?ssl=verify-full")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _ssl_in_use(url: str) -> bool:
    """Connect the way a service does (``runtime.db.Database``); whether TLS carries it."""
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            query = text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return bool((await conn.execute(query)).scalar_one())
    finally:
        await db.close()


def test_every_redis_url_is_a_verified_tls_connection_as_its_own_user(
    base: list[Doc], k8s: ModuleType
) -> None:
    """What redis-py makes of each rendered ``VOICEMESH_REDIS_URL`` (placeholders filled in):
    TLS, the CA the pod mounts, the server's name checked, the pod's own ACL user."""
    from redis.asyncio.connection import SSLConnection

    tenant_pod = _find(k8s.render(K8S / "tenants" / "acme"), "Deployment", "agent-pod")
    users = {"gateway": "gateway", "push": "push", "sms": "$(REDIS_USER)"}
    for workload, container in [
        (_find(base, "Deployment", "gateway"), "gateway"),
        (_find(base, "Deployment", "push"), "push"),
        (tenant_pod, "sms"),
    ]:
        env = {e["name"]: e for e in _container(workload, container)["env"]}
        url = env["VOICEMESH_REDIS_URL"]["value"]
        assert url.startswith(f"rediss://{users[container]}:$(REDIS_PASSWORD)@"), url
        pool = Redis.from_url(
            url.replace("$(REDIS_USER)", "acme").replace("$(REDIS_PASSWORD)", "pw")
        ).connection_pool
        kwargs = pool.connection_kwargs
        assert pool.connection_class is SSLConnection
        assert kwargs["ssl_ca_certs"] == "/var/run/secrets/voicemesh/ca/ca.crt"
        assert kwargs.get("ssl_cert_reqs", "required") == "required"
        assert kwargs.get("ssl_check_hostname", True) is True
        secret = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        if container == "sms":
            assert secret == {"name": "redis", "key": "password"}  # vm-<tenant>/redis
        else:
            assert secret == {"name": "redis-users", "key": container}
