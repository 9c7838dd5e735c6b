"""schemathesis against every service's own OpenAPI document, on the running processes.

Each service's ``/openapi.json`` drives the schemathesis CLI (coverage and fuzzing phases:
boundary values, wrong types, missing and extra fields, hostile strings) with a valid API key
and the tenant path parameter pinned to a served tenant, so requests get past the guard into
the handlers. The only check is the one that must hold for any input: no 5xx. Afterwards
every service is still alive and healthy.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import SERVICES, TENANTS, SecureMesh, record_security

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 20  # per operation; the coverage phase adds its boundary cases on top
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))


async def _fuzz(mesh: SecureMesh, service: str, out: Path) -> dict[str, Any]:
    config = out / f"{service}.toml"
    config.write_text(f'[parameters]\n"path.tenant" = "{TENANTS["fuzz"]}"\n')
    report = out / f"{service}.json"
    process = await asyncio.create_subprocess_exec(
        SCHEMATHESIS, "--config-file", str(config), "run", f"{mesh.url(service)}/openapi.json",
        "-H", f"Authorization: Bearer {mesh.key('fuzz')}",
        "--checks", "not_a_server_error", "--max-examples", str(MAX_EXAMPLES),
        "--phases", "coverage,fuzzing", "--seed", "8", "--generation-database", "none",
        "--no-shrink", "--workers", "1", "--request-timeout", "10",
        # Health checks judge the generator (tight id patterns, a busy machine), not the API.
        "--suppress-health-check", "filter_too_much,too_slow",
        "--report", "json", "--report-json-path", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=out,  # its caches go to the test's temp dir, not the repository
    )  # fmt: skip
    output, _ = await process.communicate()
    result: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
    result["output"] = output.decode(errors="replace")
    result["returncode"] = process.returncode
    return result


async def test_no_service_answers_fuzzed_requests_with_a_server_error(
    secure_mesh: SecureMesh, tmp_path: Path
) -> None:
    # Two at a time: the services and schemathesis share two cores.
    slots = asyncio.Semaphore(2)

    async def one(service: str) -> dict[str, Any]:
        async with slots:
            return await _fuzz(secure_mesh, service, tmp_path)

    results = dict(zip(SERVICES, await asyncio.gather(*(one(s) for s in SERVICES)), strict=True))
    problems = []
    generated = failed = rejected = 0
    for service, result in results.items():
        cases = result.get("test_cases", {})
        generated += int(cases.get("generated", 0))
        # schemathesis's own tally per operation: accepted (2xx) versus refused (4xx).
        for phases in result.get("valid_rates", {}).values():
            for rates in phases.values():
                rejected += int(rates.get("rejected", 0)) + int(rates.get("unreachable", 0))
        failed += int(cases.get("with_failures", 0)) + int(cases.get("errored", 0))
        if result["returncode"] != 0 or not cases.get("generated"):
            problems.append(
                f"--- {service} (exit {result['returncode']})\n{result['output'][-3000:]}"
            )
    crashed = secure_mesh.crashed()
    record_security(
        "schemathesis",
        {
            "hostile_inputs": generated,
            "rejected": rejected,
            "server_errors": failed,
            "crashes": len(crashed),
            "per_service": {
                s: r.get("test_cases", {}).get("generated", 0) for s, r in results.items()
            },
        },
    )
    assert not problems, "\n".join(problems)
    assert not crashed, crashed
    await asyncio.gather(*(p.wait_healthy(timeout=10) for p in secure_mesh.services.values()))
