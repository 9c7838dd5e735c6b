"""The ``make chaos`` table: what the fault and security suites did and what they counted.

Reads ``bench/results/chaos.json`` (written section by section by the tests in
``tests/chaos``) and, when present, ``bench/results/security.json`` (the security suite's
hostile-input counts), prints one table and exits non-zero if anything was lost,
duplicated or crashed, if a fault test did not pass, or if there are no results at all.

    uv run python tests/chaos/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
#: Sections are named after the tests that wrote them.
ORDER = (
    "sigkill_each_business_service_under_load",
    "calls_survive_a_nats_restart",
    "redis_restart_rebuilds_state_and_ends_affected_calls",
    "sigterm_ends_every_call_with_server_shutdown",
)
COLUMNS = [
    "scenario",
    "calls",
    "events published",
    "faults injected",
    "recorded / expected",
    "lost",
    "duplicated",
    "hostile inputs",
    "crashes",
]


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def security_counts(data: dict[str, Any]) -> tuple[int, int] | None:
    """(hostile inputs tried, crashes) from the security suite's JSON, if it has them.

    Reads ``totals`` if the suite wrote them, else top-level ``hostile_inputs`` /
    ``crashes``, else the sum over ``sections``.
    """
    sections = [s for s in (data.get("sections") or {}).values() if isinstance(s, dict)]
    for source in (data.get("totals"), data):
        if isinstance(source, dict) and "hostile_inputs" in source:
            return _int(source["hostile_inputs"]), _int(source.get("crashes"))
    if not sections:
        return None
    return (
        sum(_int(s.get("hostile_inputs")) for s in sections),
        sum(_int(s.get("crashes")) for s in sections),
    )


def _faults(faults: list[str]) -> str:
    """``5x SIGKILL: crm, calendar, ...`` when the faults share a signal, else each one."""
    if not faults:
        return "0"
    targets = [f.rsplit(" ", 1) for f in faults]
    signals = {t[-1] for t in targets}
    if len(faults) > 1 and len(signals) == 1 and all(len(t) == 2 for t in targets):
        return f"{len(faults)}x {signals.pop()}: " + ", ".join(t[0] for t in targets)
    return f"{len(faults)}: " + ", ".join(faults)


def rows(chaos: dict[str, Any], security: dict[str, Any]) -> list[list[str]]:
    sections: dict[str, Any] = chaos.get("sections") or {}
    names = [n for n in ORDER if n in sections] + sorted(set(sections) - set(ORDER))
    table: list[list[str]] = []
    total = dict.fromkeys(("calls", "events", "faults", "recorded", "expected"), 0)
    total |= {"lost": 0, "duplicated": 0, "crashes": 0}
    for name in names:
        s = sections[name]
        faults = [str(f) for f in s.get("faults") or []]
        published = s.get("events_published")
        status = s.get("status", "passed")
        title = str(s.get("title") or name)
        table.append(
            [
                title if status == "passed" else f"{title} [{status.upper()}]",
                str(_int(s.get("calls"))),
                "-" if published is None else str(published),
                _faults(faults),
                f"{_int(s.get('recorded'))} / {_int(s.get('expected'))}",
                str(_int(s.get("lost"))),
                str(_int(s.get("duplicated"))),
                "-",
                str(_int(s.get("crashes"))),
            ]
        )
        total["calls"] += _int(s.get("calls"))
        total["events"] += _int(published)
        total["faults"] += len(faults)
        for key in ("recorded", "expected", "lost", "duplicated", "crashes"):
            total[key] += _int(s.get(key))
    hostile = security_counts(security)
    if hostile is not None:
        tried, crashed = hostile
        table.append(["security: hostile inputs", "-", "-", "-", "-", "-", "-", str(tried)])
        table[-1].append(str(crashed))
        total["crashes"] += crashed
    table.append(
        [
            "total",
            str(total["calls"]),
            str(total["events"]),
            str(total["faults"]),
            f"{total['recorded']} / {total['expected']}",
            str(total["lost"]),
            str(total["duplicated"]),
            str(hostile[0]) if hostile else "not run",
            str(total["crashes"]),
        ]
    )
    return table


def render(table: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(COLUMNS)]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
    ]
    for row in table:
        if row[0] == "total":
            lines.append("-+-".join("-" * w for w in widths))
        lines.append(" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def main() -> int:
    chaos = _load(RESULTS / "chaos.json")
    security = _load(RESULTS / "security.json")
    if not chaos.get("sections"):
        print(f"no chaos results in {RESULTS / 'chaos.json'}: run pytest tests/chaos first")
        return 1
    table = rows(chaos, security)
    print(render(table))
    total = table[-1]
    lost, duplicated, crashes = int(total[5]), int(total[6]), int(total[8])
    unfinished = [
        name
        for name, section in chaos["sections"].items()
        if section.get("status", "passed") != "passed"
    ]
    if lost or duplicated or crashes or unfinished:
        print(
            f"\nFAILED: lost {lost}, duplicated {duplicated}, crashes {crashes}; "
            f"tests not passed: {', '.join(unfinished) or 'none'}"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
