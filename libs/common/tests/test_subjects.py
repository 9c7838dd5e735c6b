"""Subject builders, the tenant-first layout, and the rule that subjects live only here."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from voicemesh.common.contracts import subjects

REPO = Path(__file__).resolve().parents[3]


def test_every_subject_starts_with_the_tenant() -> None:
    built = [
        subjects.call_lifecycle("acme", "c1"),
        subjects.audio_in("acme", "c1"),
        subjects.audio_out("acme", "c1"),
        subjects.call_control("acme", "c1"),
        subjects.call_transcript("acme", "c1"),
        subjects.tool("acme", "calendar", "book"),
        subjects.push_voip("acme"),
        subjects.sms_outbound("acme"),
        subjects.event("acme", "tool"),
        subjects.dead_letter("acme"),
    ]
    assert all(s.startswith("vm.acme.") for s in built)
    assert subjects.call_lifecycle("acme", "c1") == "vm.acme.call.c1.lifecycle"
    assert subjects.audio_in("acme", "c1") == "vm.acme.call.c1.audio.in"
    assert subjects.tool("acme", "calendar", "book") == "vm.acme.tool.calendar.book"
    assert subjects.all_tenant_subjects("acme") == "vm.acme.>"


@pytest.mark.parametrize(
    "bad", ["", "a.b", "a b", "*x", ">", "a>", "é", "x" * 129, "acme\n", "c1\n"]
)
def test_unsafe_tokens_are_refused(bad: str) -> None:
    with pytest.raises(subjects.SubjectError):
        subjects.call_lifecycle("acme", bad)
    with pytest.raises(subjects.SubjectError):
        subjects.push_voip(bad)


def test_wildcards_make_subscription_patterns() -> None:
    assert subjects.call_lifecycle("*", "*") == "vm.*.call.*.lifecycle"
    with pytest.raises(subjects.SubjectError):
        subjects.all_tenant_subjects("*")


@pytest.mark.parametrize(
    ("subject", "pattern"),
    [
        ("vm.acme.call.c123.lifecycle", "vm.*.call.*.lifecycle"),
        ("vm.acme.call.c123.audio.in", "vm.*.call.*.audio.in"),
        ("vm.acme.tool.calendar.book", "vm.*.tool.calendar.book"),
        ("vm.acme.dlq", "vm.*.dlq"),
        ("_INBOX.abc123.def", "_INBOX.*"),
    ],
)
def test_low_cardinality_names(subject: str, pattern: str) -> None:
    assert subjects.low_cardinality(subject) == pattern


def test_parsing_helpers() -> None:
    assert subjects.tenant_of("vm.acme.push.voip") == "acme"
    assert subjects.tenant_of("other.acme") is None
    assert subjects.parse_call_subject("vm.acme.call.c1.audio.in") == ("acme", "c1", "audio.in")
    assert subjects.parse_call_subject("vm.acme.push.voip") is None
    assert subjects.tenant_of("vm.acme\n.push.voip") is None  # ``$`` would allow the newline


def _python_subject_literals(path: Path) -> list[int]:
    """Line numbers of string literals (docstrings excluded) that spell a ``vm.`` subject."""
    tree = ast.parse(path.read_text(errors="ignore"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and SUBJECT.match(node.value)
    ]


SUBJECT = re.compile(r"^vm\.")


def test_no_subject_literal_outside_libs_common() -> None:
    """Subjects are spelled only in contracts.subjects: no string literal elsewhere."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py", "*.js", "*.html"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    quoted = re.compile(r"""["'`]vm\.[A-Za-z0-9_*{$<>-]""")
    offenders = []
    for name in files:
        path = REPO / name
        if name.startswith("libs/common/") or not path.exists():
            continue
        if name.endswith(".py"):
            offenders += [f"{name}:{line}" for line in _python_subject_literals(path)]
        else:
            text = path.read_text(errors="ignore").splitlines()
            offenders += [f"{name}:{i}" for i, line in enumerate(text, 1) if quoted.search(line)]
    assert offenders == []
