"""Fixtures for the deploy/k8s tests: the deploy scripts as a module, each overlay rendered once."""

from __future__ import annotations

import importlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"

Docs = list[dict[str, Any]]


def load_validate() -> ModuleType:
    """``deploy/k8s/validate.py`` as ``deploy.k8s.validate`` (with ``policy``, ``nats_auth``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("deploy.k8s.validate")


@pytest.fixture(scope="session")
def k8s() -> ModuleType:
    return load_validate()


@pytest.fixture(scope="session")
def rendered(k8s: ModuleType) -> dict[str, Docs]:
    """``kubectl kustomize`` output of every deployable overlay, keyed ``base``,
    ``verticals/<v>``, ``tenants/<t>``."""
    overlays: list[Path] = k8s.overlays()
    with ThreadPoolExecutor(max_workers=4) as pool:
        docs = list(pool.map(k8s.render, overlays))
    return {str(o.relative_to(K8S)): d for o, d in zip(overlays, docs, strict=True)}
