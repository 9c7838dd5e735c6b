"""Shared pieces of the fault-injection tests: where their counts go, and the mesh's settings.

Each chaos test writes what it did and what it counted into its own section of
``bench/results/chaos.json``; ``tests/chaos/report.py`` (run by ``make chaos``) prints the
table. Sections are merged under a file lock, so tests may run in any order or in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pytest

from voicemesh.testkit import results
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess
from voicemesh.testkit.mesh import provision

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "chaos.json"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every fault test kills or stalls processes under load: it runs in the serial phase of
    ``make test`` (``-m slow``), where no parallel worker competes for the two cores."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.slow)


def record_section(name: str, data: dict[str, Any], path: Path = RESULTS) -> None:
    """Replace section ``name`` of the chaos results with ``data`` (other sections kept)."""
    results.record_section(path, name, data)


async def start_gateway_and_agent(
    processes: ProcessTracker,
    nats_url: str,
    redis_url: str,
    *,
    tenant: str,
    vertical: str,
    secret: str,
    api_key: str,
) -> tuple[ServiceProcess, ServiceProcess, str]:
    """The gateway and the agent serving ``tenant``, healthy; and the gateway's base URL."""
    await provision(nats_url, services={"agent"})
    gateway_port = free_port()
    common = {"VOICEMESH_NATS_URL": nats_url, "VOICEMESH_TENANTS": f"{tenant}:{vertical}"}
    gateway = processes.python_module(
        "voicemesh.gateway",
        {
            **common,
            "VOICEMESH_REDIS_URL": redis_url,
            "VOICEMESH_CALL_TOKEN_SECRET": secret,
            "VOICEMESH_API_KEYS": f"{tenant}:{api_key}",
        },
        http_port=gateway_port,
    )
    agent = processes.python_module("voicemesh.agent", common)
    await gateway.wait_healthy(30)
    await agent.wait_healthy(30)
    return gateway, agent, f"http://127.0.0.1:{gateway_port}"


class GatewayAndAgent(Protocol):
    async def __call__(
        self, *, tenant: str, vertical: str, secret: str, api_key: str
    ) -> tuple[ServiceProcess, ServiceProcess, str]: ...


@pytest.fixture
def gateway_and_agent(processes: ProcessTracker, nats_url: str, redis_url: str) -> GatewayAndAgent:
    """``start_gateway_and_agent`` on the test's nats-server and Redis."""
    return partial(start_gateway_and_agent, processes, nats_url, redis_url)


_OUTCOME = pytest.StashKey[str]()

Recorder = Callable[[dict[str, Any]], None]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_OUTCOME] = report.outcome
    return report


@pytest.fixture
def chaos_results(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    """``chaos_results({...})`` records the test's counts as its section of the results.

    The section is named after the test and carries its outcome: a test that fails, even
    before it recorded anything, leaves ``status: failed`` rather than an older run's counts.
    """
    name = request.node.name.removeprefix("test_")
    recorded: dict[str, Any] = {}

    def record(data: dict[str, Any]) -> None:
        recorded.update(data)
        record_section(name, {**recorded, "status": "running"})

    record_section(name, {"status": "running"})
    yield record
    record_section(name, {**recorded, "status": request.node.stash.get(_OUTCOME, "failed")})
