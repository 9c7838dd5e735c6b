"""``python -m deploy.rehearse``: bring the rehearsal overlay up, report, stop.

uv run --frozen python -m deploy.rehearse            # up, then stop and report
uv run --frozen python -m deploy.rehearse --keep     # stay up until Ctrl-C
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from deploy.rehearse import net, render
from deploy.rehearse.cluster import Cluster, is_root
from deploy.rehearse.rehearsal import WORKAROUNDS, bring_up, run_directory

STATE = render.ROOT / ".voicemesh" / "rehearse" / "runs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="stay up until interrupted")
    parser.add_argument(
        "--workaround",
        action="append",
        default=[],
        choices=sorted(WORKAROUNDS),
        help="get past a known problem to find the next: "
        + "; ".join(f"{k}: {v}" for k, v in WORKAROUNDS.items()),
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not is_root():
        print("the rehearsal needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    manifests = render.load()
    directory = run_directory(STATE)
    print(f"rehearsal in {directory}")
    with Cluster(directory) as cluster:
        try:
            timing = bring_up(cluster, manifests, frozenset(args.workaround))
        except (TimeoutError, RuntimeError) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        print(cluster.status())
        for step, seconds in timing.steps.items():
            print(f"  {step:<40} {seconds:>7.1f}s")
        if args.keep:
            print("up; Ctrl-C stops it")
            while True:
                time.sleep(3600)
    left = net.leftovers()
    if left:
        print(f"left behind: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
