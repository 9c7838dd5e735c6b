"""Sections of a ``bench/results/*.json`` file, written by tests that may run in any order.

Each writer replaces its own section (stamped with the time) and keeps the others; the
file is its own advisory lock, so parallel writers never lose each other's sections.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["record_section"]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_section(
    path: Path, name: str, data: dict[str, Any], *, totals: Sequence[str] = ()
) -> None:
    """Replace section ``name`` of ``path`` with ``data``; ``totals`` names the counts to
    sum over every section into the file's ``totals``."""
    with _locked(path):
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = {}
        if not isinstance(current, dict):
            current = {}
        sections = current.setdefault("sections", {})
        sections[name] = {**data, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if totals:
            current["totals"] = {
                count: sum(int(entry.get(count, 0)) for entry in sections.values())
                for count in totals
            }
        path.write_text(json.dumps(current, indent=2, sort_keys=True))
