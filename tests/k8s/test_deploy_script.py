"""``deploy/k8s/deploy.sh --render VERTICAL TENANT`` (what ``make deploy`` runs, without a
cluster): writes the tenant overlay, regenerates the NATS permissions, validates, renders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .conftest import K8S


def run_deploy(k8s_copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(k8s_copy / "deploy.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable},
    )


def test_render_a_new_tenant(tmp_path: Path) -> None:
    # A copy of deploy/k8s, so the test never writes into the repository.
    copy = tmp_path / "deploy" / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("__pycache__"))
    result = run_deploy(copy, "--render", "salon", "zeta-hair")
    assert result.returncode == 0, result.stdout + result.stderr
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(_manifests(result.stdout)) if d]
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    assert namespaces == {"vm-zeta-hair"}
    tenant = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("tenant-")
    )
    assert tenant["data"]["VOICEMESH_TENANT"] == "zeta-hair"
    assert tenant["data"]["VOICEMESH_TENANTS"] == "zeta-hair:salon"
    auth = (copy / "base/nats/auth.conf").read_text()
    assert '"user": "zeta-hair"' in auth and '"vm.zeta-hair.>"' in auth
    assert "zeta-hair:salon" in (copy / "base/tenants.env").read_text()
    # The repository itself is untouched.
    assert not (K8S / "tenants" / "zeta-hair").exists()
    assert "zeta-hair" not in (K8S / "base/nats/auth.conf").read_text()


def _manifests(stdout: str) -> str:
    """The rendered YAML: everything from the first ``apiVersion:`` line on."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("apiVersion:"))
    return "\n".join(lines[start:])


def test_bad_input_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for args, message in [
        (("--render", "plumbing", "acme2"), "unknown vertical"),
        (("--render", "salon", "Bad_Name"), "invalid tenant"),
        (("--render", "salon", "push"), "reserved"),
        (("--render", "salon", "acme"), "already exists on vertical 'healthcare'"),
    ]:
        result = run_deploy(copy, *args)
        assert result.returncode == 2, args
        assert message in result.stderr
    assert not (copy / "tenants" / "acme2").exists()
