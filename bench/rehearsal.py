"""The cluster rehearsal as a benchmark: bring-up, then each scenario; a table and JSON.

Runs ``deploy/rehearse`` (root: network namespaces and iptables): deploy.sh for the two
tenants of ``deploy/k8s/overlays/rehearsal``, then the scenarios of
``deploy/rehearse/scenarios.py``. ``bench/results/rehearsal.json`` has one entry per
scenario (name, passed, calls, faults, lost, duplicated, restarts, setup_p95_ms) and, at
the top level, passed, lost and duplicated.

    sudo uv run python bench/rehearsal.py
    sudo uv run python bench/rehearsal.py --workaround nats-passwords   # past a known problem
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from _report import report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.rehearse import net, render, scenarios  # noqa: E402 - after the path above
from deploy.rehearse.cluster import Cluster  # noqa: E402
from deploy.rehearse.rehearsal import WORKAROUNDS, bring_up, run_directory  # noqa: E402

COLUMNS = [
    "scenario",
    "passed",
    "calls",
    "faults",
    "lost",
    "duplicated",
    "restarts",
    "setup p95 ms",
    "s",
]


def rehearse(workarounds: frozenset[str]) -> list[scenarios.Result]:
    manifests = render.load()
    directory = run_directory(ROOT / ".voicemesh" / "rehearse" / "runs")
    with Cluster(directory) as cluster:
        started = time.monotonic()
        try:
            timing = bring_up(cluster, manifests, workarounds)
        except Exception as exc:  # the bring-up is a scenario too: failed, with why
            failed = scenarios.Result("bring-up", False, detail=str(exc))
            failed.problems = [str(exc).splitlines()[0]]
            failed.seconds = round(time.monotonic() - started, 1)
            return [failed]
        bring = scenarios.Result("bring-up", not workarounds, restarts=cluster.restarts())
        bring.seconds = timing.steps["total"]
        bring.detail = ", ".join(f"{k} {v:.0f}s" for k, v in timing.steps.items())
        if workarounds:
            bring.problems = [f"with workaround {w}" for w in sorted(workarounds)]
        results = [bring, *scenarios.run(cluster, manifests)]
    left = net.leftovers()
    if left:
        results.append(scenarios.Result("clean-stop", False, problems=[f"left behind: {left}"]))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workaround", action="append", default=[], choices=sorted(WORKAROUNDS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = rehearse(frozenset(args.workaround))
    rows = [
        [
            r.name,
            r.passed,
            r.calls,
            r.faults,
            r.lost,
            r.duplicated,
            r.restarts,
            r.setup_p95_ms,
            r.seconds,
        ]
        for r in results
    ]
    passed = all(r.passed for r in results)
    extra = {
        "passed": passed,
        "lost": sum(r.lost for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "scenarios": [r.as_json() for r in results],
    }
    report("rehearsal", COLUMNS, rows, extra)
    for result in results:
        for problem in result.problems:
            print(f"  {result.name}: {problem}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
