"""A rehearsal of ``make deploy``: ``deploy/k8s/deploy.sh`` itself, once per tenant.

Before it, what an operator provides: a CA (``deploy/k8s/certs.py ca``, as
``TLS_CA_CERT``/``TLS_CA_KEY``) and the Secret ``apns`` (the APNs credentials; here the
provider keys and CA of the APNs simulator, which runs on the rehearsal's internet).

deploy.sh runs unchanged, in a copy of ``deploy/k8s`` made of symbolic links where ``base``
is the rehearsal overlay's base and ``tenants/<tenant>`` its tenant overlays; its
``KUBECTL`` is the rehearsal's (``kubectl.Api``), so every Secret, database, role, ACL and
roll-out is made by the script that makes them in production.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.k8s import nats_auth
from deploy.rehearse import net
from deploy.rehearse.cluster import WORKLOADS, Cluster
from deploy.rehearse.kubectl import Api
from deploy.rehearse.render import OVERLAY, ROOT, SHARED, Manifests, kind

log = logging.getLogger("rehearse")

K8S = ROOT / "deploy" / "k8s"
#: Steps the rehearsal can take that deploy.sh does not, to get past a known problem and
#: find the next one. A run with any of them does not pass.
WORKAROUNDS = {
    "nats-passwords": "a NATS password for every user of auth.conf, not only for the "
    "tenants deployed (deploy.sh makes too few: nats-server cannot resolve the others)",
}
DEPLOY_TIMEOUT_S = 1500.0
READY_S = 300.0


class DeployFailed(RuntimeError):
    """deploy.sh exited with an error."""


@dataclass
class BringUp:
    """How long each step took, in seconds."""

    steps: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str, since: float) -> float:
        self.steps[step] = round(time.monotonic() - since, 1)
        log.info("%s: %.1fs", step, self.steps[step])
        return time.monotonic()


def start_apns_simulator(cluster: Cluster, tenants: list[str]) -> None:
    """The simulator on the internet's Apple address; its CA and keys in the Secret apns."""
    from voicemesh.apnssim.certs import make_provider_key, make_tls_material

    directory = cluster.directory / "apns"
    tls = make_tls_material(directory / "tls")
    apns: dict[str, str] = {"ca.pem": tls.ca_path.read_text()}
    accepted = []
    for tenant in tenants:
        key = make_provider_key()
        bundle = f"io.voicemesh.{tenant.replace('-', '')}"
        apns[f"{tenant}.p8"] = key.private_pem
        entry = {"key_id": key.key_id, "team_id": key.team_id, "bundle_id": bundle}
        apns[f"{tenant}.json"] = json.dumps({**entry, "key_file": f"{tenant}.p8"})
        accepted.append(
            {"key_id": key.key_id, "team_id": key.team_id, "public_key": key.public_pem}
        )
    keys_file = directory / "keys.json"
    keys_file.write_text(json.dumps(accepted))
    cluster.secrets[(SHARED, "apns")] = apns
    files = ["--cert", str(tls.cert_path), "--key", str(tls.key_path), "--ca", str(tls.ca_path)]
    argv = [
        *(sys.executable, "-m", "voicemesh.apnssim", "--host", "0.0.0.0", "--port", "443"),
        *("--admin-port", "8080", "--tls-dir", str(directory / "tls"), *files),
        *("--keys-file", str(keys_file)),
    ]
    cluster.run_outside(f"{net.NETNS_PREFIX}internet", "apns-simulator", argv)


def deploy_tree(directory: Path, manifests: Manifests) -> Path:
    """deploy/k8s as links, with the rehearsal's base and tenant overlays in their places."""
    k8s = directory / "deploy" / "k8s"
    (k8s / "tenants").mkdir(parents=True)
    for entry in K8S.iterdir():
        if entry.name not in ("base", "tenants", "overlays"):
            (k8s / entry.name).symlink_to(entry)
    (k8s / "base").symlink_to(OVERLAY / "base")
    for tenant in manifests.tenants:
        (k8s / "tenants" / tenant.name).symlink_to(OVERLAY / tenant.name)
    return k8s


def nats_users(manifests: Manifests) -> list[str]:
    """Every user of the rendered NATS permission file."""
    for obj in manifests.base:
        data = obj.get("data") or {}
        if "auth.conf" in data:
            return [user.name for user in nats_auth.parse(str(data["auth.conf"]))]
    raise ValueError("no ConfigMap with auth.conf in the base")


def images_of(manifests: Manifests) -> set[str]:
    return {
        str(c["image"])
        for obj in manifests.everything()
        if kind(obj) in WORKLOADS
        for c in obj["spec"]["template"]["spec"]["containers"]
    }


def make_ca(directory: Path) -> tuple[Path, Path]:
    subprocess.run(  # noqa: S603 - this interpreter, the repository's script
        [sys.executable, str(K8S / "certs.py"), "ca", str(directory)],
        check=True,
        capture_output=True,
    )
    return directory / "ca.crt", directory / "ca.key"


def bring_up(
    cluster: Cluster, manifests: Manifests, workarounds: frozenset[str] = frozenset()
) -> BringUp:
    """deploy.sh for every tenant of ``manifests``, on ``cluster``; then every pod ready."""
    unknown = workarounds - WORKAROUNDS.keys()
    if unknown:
        raise ValueError(f"unknown workarounds {sorted(unknown)}; known: {sorted(WORKAROUNDS)}")
    timing = BringUp()
    start = now = time.monotonic()
    work = cluster.directory / "deploy"
    work.mkdir()
    ca_cert, ca_key = make_ca(work / "ca")
    start_apns_simulator(cluster, [t.name for t in manifests.tenants])
    if "nats-passwords" in workarounds:
        users = {nats_auth.password_env(u): os.urandom(24).hex() for u in nats_users(manifests)}
        cluster.secrets[(SHARED, "nats-users")] = users
    tree = deploy_tree(work / "tree", manifests)
    api = Api(cluster, work / "api.sock")
    env = {
        **os.environ,
        "KUBECTL": str(api.shim(work)),
        "PYTHON": sys.executable,
        "TLS_CA_CERT": str(ca_cert),
        "TLS_CA_KEY": str(ca_key),
    }
    cluster.images.prepare(images_of(manifests))
    now = timing.mark("images", now)
    try:
        for tenant in manifests.tenants:
            log_path = work / f"deploy-{tenant.name}.log"
            with open(log_path, "wb") as out:
                result = subprocess.run(  # noqa: S603 - the repository's deploy script
                    ["/bin/bash", str(tree / "deploy.sh"), tenant.vertical, tenant.name],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=DEPLOY_TIMEOUT_S,
                    check=False,
                )
            if result.returncode != 0:
                tail = "\n".join(log_path.read_text().splitlines()[-15:])
                raise DeployFailed(
                    f"deploy.sh {tenant.vertical} {tenant.name}: exit {result.returncode}\n{tail}"
                )
            now = timing.mark(f"deploy.sh {tenant.vertical} {tenant.name}", now)
    finally:
        api.close()
    cluster.wait(cluster.ready, READY_S, "not every pod is ready")
    timing.mark("every pod ready", now)
    timing.steps["total"] = round(time.monotonic() - start, 1)
    return timing


KEEP_RUNS = 5


def run_directory(root: Path) -> Path:
    """A new directory for a run's pods, logs and volumes; the oldest runs beyond KEEP_RUNS go."""
    if root.exists():
        for old in sorted(root.iterdir())[: -(KEEP_RUNS - 1) or None]:
            shutil.rmtree(old, ignore_errors=True)
    directory = root / time.strftime("%Y%m%d-%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    return directory
