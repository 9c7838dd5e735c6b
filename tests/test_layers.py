"""The layers hold: one way to connect to NATS, no test kit in production, small modules.

These read the source tree, so a second connection factory, a production import of the
development-only test kit, or a module grown past 500 lines fails here, before review.
"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONNECTION_MODULE = "libs/common/src/voicemesh/common/runtime/connection.py"
#: Modules of the CLI that only its `local` extra (the test kit, the phone) can run; the
#: entry point imports them lazily, so the CLI image (stream provisioning) never loads them.
CLI_LOCAL_MODULES = {"tools/cli/src/voicemesh/cli/stack.py", "tools/cli/src/voicemesh/cli/call.py"}
MAX_MODULE_LINES = 500


def _python_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in listed if (ROOT / f).exists()]


def _production_files() -> list[str]:
    return [
        f
        for f in _python_files()
        if f.startswith(("libs/common/src/", "tools/cli/src/"))
        or (f.startswith("services/") and "/src/" in f)
    ]


def _tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(), filename=path)


def _nats_connections(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Calls that open a NATS connection: ``nats.connect`` (any alias) or ``NatsBroker(``."""
    nats_modules: set[str] = set()
    connect_names: set[str] = set()
    broker_names: set[str] = {"NatsBroker"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "nats":
                    nats_modules.add(alias.asname or "nats")
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            for alias in node.names:
                if node.module == "nats" and alias.name == "connect":
                    connect_names.add(alias.asname or "connect")
                if node.module.startswith("faststream.nats") and alias.name == "NatsBroker":
                    broker_names.add(alias.asname or "NatsBroker")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "connect"
            and isinstance(func.value, ast.Name)
            and func.value.id in nats_modules
        ):
            yield node.lineno, f"{func.value.id}.connect("
        elif isinstance(func, ast.Name) and func.id in connect_names | broker_names:
            yield node.lineno, f"{func.id}("


def _testkit_imports(tree: ast.Module, *, top_level_only: bool = False) -> Iterator[int]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import) and any(
            a.name.startswith("voicemesh.testkit") for a in node.names
        ):
            yield node.lineno
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module is not None
            and node.module.startswith("voicemesh.testkit")
        ):
            yield node.lineno


def test_only_the_runtime_opens_nats_connections() -> None:
    offenders = [
        f"{path}:{line}: {call}"
        for path in _python_files()
        if path != CONNECTION_MODULE
        for line, call in _nats_connections(_tree(path))
    ]
    assert offenders == [], "open NATS connections with voicemesh.common.runtime.connection"


def test_the_detector_finds_every_spelling() -> None:
    source = """
import nats
import nats as nats_py
from nats import connect as open_nats
from faststream.nats import NatsBroker as Broker

async def f():
    await nats.connect("x")
    await nats_py.connect(servers=["x"])
    await open_nats("x")
    Broker("x")
"""
    found = [call for _line, call in sorted(_nats_connections(ast.parse(source)))]
    assert found == ["nats.connect(", "nats_py.connect(", "open_nats(", "Broker("]


def test_no_production_package_imports_the_test_kit() -> None:
    offenders = []
    for path in _production_files():
        tree = _tree(path)
        if path in CLI_LOCAL_MODULES:
            continue
        lines = list(_testkit_imports(tree))
        offenders += [f"{path}:{line}" for line in lines]
    assert offenders == []


def test_the_cli_loads_its_local_commands_lazily() -> None:
    entry = _tree("tools/cli/src/voicemesh/cli/__main__.py")
    local = {"voicemesh.cli.stack", "voicemesh.cli.call"}
    eager = [
        node.lineno
        for node in entry.body
        if isinstance(node, ast.ImportFrom) and node.module in local
    ]
    assert eager == [], "the CLI image has no test kit: import `up` and `call` inside main"


@pytest.mark.parametrize("prefix", ["libs/", "services/"])
def test_no_module_is_over_500_lines(prefix: str) -> None:
    long = {
        path: n
        for path in _python_files()
        if path.startswith(prefix) and "/src/" in path
        if (n := len((ROOT / path).read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
