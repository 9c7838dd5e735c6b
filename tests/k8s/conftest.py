"""Fixtures for the deploy/k8s tests: each overlay rendered once (the deploy scripts as a
module, ``k8s``, come from ``tests/conftest.py``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"

Docs = list[dict[str, Any]]


@pytest.fixture(scope="session")
def rendered(k8s: ModuleType) -> dict[str, Docs]:
    """``kubectl kustomize`` output of every deployable overlay, keyed ``base``,
    ``verticals/<v>``, ``tenants/<t>``."""
    overlays: list[Path] = k8s.overlays()
    with ThreadPoolExecutor(max_workers=4) as pool:
        docs = list(pool.map(k8s.render, overlays))
    return {str(o.relative_to(K8S)): d for o, d in zip(overlays, docs, strict=True)}
