"""The Makefile's per-service and per-benchmark targets do what the README says."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_"))


def _dry_run(target: str) -> str:
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("service", SERVICES)
def test_run_service_runs_that_service(service: str) -> None:
    assert f"python -m voicemesh.{service}" in _dry_run(f"run-{service}")


def test_bench_name_runs_that_benchmark() -> None:
    assert "voice" in BENCHES
    for bench in BENCHES:
        assert f"python bench/{bench}.py" in _dry_run(f"bench-{bench}"), bench
