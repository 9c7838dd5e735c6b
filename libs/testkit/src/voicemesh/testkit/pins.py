"""Tests that a patched or subclassed library is the exact version the patch was written for.

``source_digest`` names an object by ``"package.module:Qualified.name"`` and digests its
source; ``pinned_exactly`` reads a package's ``pyproject.toml``. A test that compares
both against the values recorded with the patch fails as soon as either changes.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

__all__ = ["changed_sources", "pinned_exactly", "source_digest"]


def source_digest(path: str) -> str:
    """``"package.module:Qualified.name"`` → the digest of that object's source."""
    module, _, qualname = path.partition(":")
    target: object = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    source = inspect.getsource(target)  # type: ignore[arg-type]  # a module, class or function
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def changed_sources(recorded: dict[str, str]) -> dict[str, str]:
    """The objects whose source digest is no longer the one ``recorded`` with the patch."""
    found = {path: source_digest(path) for path in recorded}
    return {path: digest for path, digest in found.items() if digest != recorded[path]}


def pinned_exactly(pyproject: Path, package: str) -> str | None:
    """The version ``pyproject`` pins ``package`` to with ``==`` and that is installed, or
    ``None`` when it is not pinned exactly or another version is installed."""
    project = tomllib.loads(pyproject.read_text())
    for requirement in project["project"]["dependencies"]:
        name, _, pinned = requirement.replace(" ", "").partition("==")
        if name == package and pinned:
            return pinned if version(package) == pinned else None
    return None
