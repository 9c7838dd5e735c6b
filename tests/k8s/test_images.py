"""Every service has a production Dockerfile: multi-stage with uv, only its own locked
dependencies, a numeric non-root user, pinned base images, ``python -m voicemesh.<name>``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import ROOT

SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
IMAGES = [*(f"services/{s}" for s in SERVICES), "tools/cli"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_service_has_a_dockerfile() -> None:
    assert len(SERVICES) == 8
    for image in IMAGES:
        assert (ROOT / image / "Dockerfile").is_file(), image


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_production_shaped(image: str) -> None:
    name = image.rsplit("/", 1)[1]
    steps = instructions(ROOT / image / "Dockerfile")
    args = {
        a.split("=", 1)[0]: a.split("=", 1)[1] for word, a in steps if word == "ARG" and "=" in a
    }
    froms = [a for word, a in steps if word == "FROM"]
    assert len(froms) >= 3, "multi-stage: uv, build, runtime"
    for base in [args["PYTHON_IMAGE"], args["UV_IMAGE"]]:
        tag = base.rsplit(":", 1)
        assert len(tag) == 2 and tag[1] != "latest" and re.search(r"\d", tag[1]), base
    runs = " ".join(a for word, a in steps if word == "RUN")
    assert f"uv sync --locked --package voicemesh-{name} --no-dev --no-install-workspace" in runs
    assert f"uv sync --locked --package voicemesh-{name} --no-dev --no-editable" in runs
    # The runtime stage is the last one: it gets the venv and nothing else from the build.
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    copies = [a for word, a in runtime if word == "COPY"]
    assert copies == ["--from=build /app/.venv /app/.venv"]
    (user,) = [a for word, a in runtime if word == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    (entry,) = [a for word, a in runtime if word == "ENTRYPOINT"]
    assert json.loads(entry) == ["python", "-m", f"voicemesh.{name}"]


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in [".git", ".venv", ".voicemesh", "**/*.db", "tests", "deploy"]:
        assert entry in ignored
