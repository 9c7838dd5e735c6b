"""Run the uv steps of every Dockerfile without Docker, then import the service.

Each image installs only its own package's locked dependencies
(``uv sync --locked --package voicemesh-<name> --no-dev``), so a module that imports a
library its package does not declare works in the workspace (where every package is
installed) and fails in the image. This script reproduces each Dockerfile's two
``uv sync`` steps in a scratch directory (the build context minus ``.dockerignore``),
imports the service's entry modules with the resulting environment, and prints a table.

    uv run python deploy/docker/check_images.py            # every image
    uv run python deploy/docker/check_images.py crm agent  # some
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_PACKAGE = re.compile(r"uv sync --locked --package (voicemesh-[a-z]+) --no-dev --no-editable")


@dataclass(frozen=True)
class Result:
    image: str
    ok: bool
    seconds: float
    size_mb: float
    detail: str


def dockerfiles() -> dict[str, Path]:
    found = sorted([*ROOT.glob("services/*/Dockerfile"), *ROOT.glob("tools/*/Dockerfile")])
    return {path.parent.name: path for path in found}


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rules, closely enough for this repository: last match wins, ``!`` keeps."""
    verdict = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        bare = pattern.lstrip("!")
        candidates = {bare, bare.removeprefix("**/")}
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for p in [*prefixes, parts[-1]] for c in candidates):
            verdict = not keep
    return verdict


def build_context(dest: Path) -> None:
    patterns = ignore_patterns()
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if not path.is_file() or ignored(relative, patterns):
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def uv(args: list[str], cwd: Path, venv: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_LINK_MODE": "copy",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON": sys.executable,
    }
    env.pop("VIRTUAL_ENV", None)
    binary = shutil.which("uv")
    if binary is None:
        raise SystemExit("uv not found on PATH")
    return subprocess.run(  # noqa: S603 - uv with fixed arguments
        [binary, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def check(image: str, dockerfile: Path, context: Path, scratch: Path) -> Result:
    start = time.monotonic()
    match = _PACKAGE.search(re.sub(r"\\\n\s*", "", dockerfile.read_text()))
    if match is None:
        return Result(image, False, 0.0, 0.0, "no `uv sync --locked --package … --no-editable`")
    package = match[1]
    work = scratch / image
    manifests = work / "manifests"
    shutil.copytree(context, manifests)
    for path in sorted(manifests.rglob("*"), reverse=True):
        if path.is_file() and path.name not in {"pyproject.toml", "uv.lock"}:
            path.unlink()
    venv = work / "venv"
    steps = [
        (
            ["sync", "--locked", "--package", package, "--no-dev", "--no-install-workspace", "-q"],
            manifests,
        ),
        (["sync", "--locked", "--package", package, "--no-dev", "--no-editable", "-q"], context),
    ]
    for args, cwd in steps:
        result = uv(args, cwd, venv)
        if result.returncode != 0:
            return Result(image, False, time.monotonic() - start, 0.0, result.stderr[-300:])
    module = package.removeprefix("voicemesh-")
    probe = (
        "import importlib, importlib.util as u\n"
        f"importlib.import_module('voicemesh.{module}')\n"
        f"assert u.find_spec('voicemesh.{module}.__main__')\n"
        "assert u.find_spec('pytest') is None, 'dev dependencies in the image'\n"
    )
    result = subprocess.run(  # noqa: S603 - the venv's python
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=False
    )
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 1e6
    detail = result.stderr.strip().splitlines()[-1][:100] if result.returncode else "imports"
    return Result(image, result.returncode == 0, time.monotonic() - start, size, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="e.g. crm agent (default: every image)")
    args = parser.parse_args(argv)
    found = dockerfiles()
    wanted = args.images or list(found)
    unknown = [i for i in wanted if i not in found]
    if unknown:
        parser.error(f"no Dockerfile for {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="vm-images-") as tmp:
        context = Path(tmp) / "context"
        build_context(context)
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda i: check(i, found[i], context, Path(tmp)), wanted))
    print(f"{'image':<12} {'result':<6} {'venv MB':>8} {'seconds':>8}  detail")
    for r in results:
        status = "ok" if r.ok else "FAIL"
        print(f"{r.image:<12} {status:<6} {r.size_mb:>8.0f} {r.seconds:>8.1f}  {r.detail}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
