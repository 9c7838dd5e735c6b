"""One production Dockerfile, ``deploy/docker/Dockerfile``, builds every image
(``--build-arg SERVICE=<name>``): multi-stage with uv, only the image's own locked dependencies,
a numeric non-root user, pinned base images, ``python -m voicemesh.<name>``; the services serve
HTTP, with a HEALTHCHECK, on the port their manifests use.

The Dockerfile is read with ``deploy/docker/check_images.py`` (``make images-check``), so the
script and these tests see the same stages; its probe for the development test kit is run
here on small fake environments."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .conftest import K8S, ROOT


def load_check_images() -> ModuleType:
    """``deploy/docker/check_images.py`` as ``deploy.docker.check_images``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("deploy.docker.check_images")


check_images = load_check_images()
DOCKERFILE: Any = check_images.parse()
IMAGES: list[str] = DOCKERFILE.images()
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))


def steps(image: str, word: str) -> list[str]:
    """The arguments of every ``word`` instruction of the stages ``image`` is made of."""
    return [s.args for stage in DOCKERFILE.chain(image) for s in stage.steps if s.word == word]


def env(image: str) -> dict[str, str]:
    """The image's environment, as its ENV instructions leave it."""
    out: dict[str, str] = {}
    for stage in DOCKERFILE.chain(image):
        variables = DOCKERFILE.build_args(image)
        for step in stage.steps:
            if step.word == "ARG":
                name, _, default = step.args.partition("=")
                variables.setdefault(name, default)
            if step.word == "ENV":
                for pair in step.args.split():
                    name, _, value = pair.partition("=")
                    out[name] = check_images.expand(value, {**variables, **out})
    return out


def test_one_dockerfile_builds_every_service_and_the_cli() -> None:
    assert len(SERVICES) == 8
    assert sorted(IMAGES) == sorted([*SERVICES, "cli"])
    leftovers = [*ROOT.glob("services/*/Dockerfile"), *ROOT.glob("tools/*/Dockerfile")]
    assert not leftovers, "the images are built from deploy/docker/Dockerfile only"


def test_the_header_documents_every_image() -> None:
    header = check_images.DOCKERFILE.read_text().split("\nARG ", 1)[0]
    table = dict(re.findall(r"^#   ([a-z]+) +\S.*?(HTTP \d+|no HTTP)", header, re.MULTILINE))
    assert table == {
        image: (f"HTTP {env(image)['VOICEMESH_HTTP_PORT']}" if image != "cli" else "no HTTP")
        for image in IMAGES
    }
    (loop,) = re.findall(r"^#   for s in ([a-z ]+); do$", header, re.MULTILINE)
    assert loop.split() == IMAGES
    assert (
        "docker build -f deploy/docker/Dockerfile --build-arg SERVICE=gateway"
        " -t ghcr.io/voicemesh/gateway:0.1.0 ." in header
    )


@pytest.mark.parametrize("image", IMAGES)
def test_image_is_production_shaped(image: str) -> None:
    assert len(DOCKERFILE.stages) >= 4, "multi-stage: uv, manifests, build, runtime"
    for base in [DOCKERFILE.args["PYTHON_IMAGE"], DOCKERFILE.args["UV_IMAGE"]]:
        tag = base.rsplit(":", 1)
        assert len(tag) == 2 and tag[1] != "latest" and re.search(r"\d", tag[1]), base
    # Dependencies first, from the manifests alone (a cached layer), then the sources.
    package = ["sync", "--locked", "--package", f"voicemesh-{image}", "--no-dev"]
    assert DOCKERFILE.uv_syncs(image) == [
        ([*package, "--no-install-workspace"], "manifests"),
        ([*package, "--no-editable"], "context"),
    ]
    chain = DOCKERFILE.chain(image)
    assert [s.name for s in chain][-2] == f"image-{image}"
    assert check_images.expand(chain[0].base, DOCKERFILE.args) == DOCKERFILE.args["PYTHON_IMAGE"]
    # The runtime gets the venv and nothing else from the build.
    assert steps(image, "COPY") == ["--from=build /app/.venv /app/.venv"]
    (user,) = steps(image, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    variables = env(image)
    assert variables["PATH"].startswith("/app/.venv/bin:")
    assert variables["VOICEMESH_MODULE"] == f"voicemesh.{image}"
    (entry,) = steps(image, "ENTRYPOINT")
    assert "python -m" in " ".join(json.loads(entry))
    if image == "cli":  # a Job: no server, so no port and no health check
        assert steps(image, "EXPOSE") == [] and steps(image, "HEALTHCHECK") == []
        assert "VOICEMESH_HTTP_PORT" not in variables
        assert [json.loads(c) for c in steps(image, "CMD")] == [["streams", "apply"]]
    else:
        assert steps(image, "EXPOSE") == [variables["VOICEMESH_HTTP_PORT"]]
        assert variables["VOICEMESH_HTTP_HOST"] == "0.0.0.0"
        (health,) = steps(image, "HEALTHCHECK")
        assert "/healthz" in health and "VOICEMESH_HTTP_PORT" in health
        assert steps(image, "CMD") == []


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_runs_the_module_with_the_arguments(image: str, tmp_path: Path) -> None:
    # A stand-in `python` that prints its arguments, one a line.
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    python.chmod(0o755)
    (entry,) = steps(image, "ENTRYPOINT")
    default = [json.loads(c) for c in steps(image, "CMD")][-1:] or [[]]
    argv = [*json.loads(entry), *default[0], "--flag", "two words"]
    run_env = {**env(image), "PATH": f"{tmp_path}:/usr/bin:/bin"}
    out = subprocess.run(argv, env=run_env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["-m", f"voicemesh.{image}", *default[0], "--flag", "two words"]


def test_manifests_use_the_ports_the_images_expose() -> None:
    containers: dict[str, list[dict[str, Any]]] = {}
    for path in [*(K8S / "base").glob("*.yaml"), *(K8S / "agent").glob("*.yaml")]:
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {})
            pod = spec.get("template", {}).get("spec", {})
            pod = pod or spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
            for container in pod.get("containers", []) if isinstance(pod, dict) else []:
                image = str(container.get("image", ""))
                if image.startswith("ghcr.io/voicemesh/"):
                    name = image.removeprefix("ghcr.io/voicemesh/").split(":")[0]
                    containers.setdefault(name, []).append(container)
    assert set(containers) == set(IMAGES)
    for image, found in containers.items():
        for container in found:
            ports = [p["containerPort"] for p in container.get("ports", [])]
            if image == "cli":
                assert ports == []
                continue
            port = env(image)["VOICEMESH_HTTP_PORT"]
            assert int(port) in ports, (image, ports)
            for variable in container.get("env", []):
                if variable["name"] == "VOICEMESH_HTTP_PORT":
                    assert variable["value"] == port, image


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in [".git", ".venv", ".voicemesh", "**/*.db", "tests", "deploy"]:
        assert entry in ignored


# The probe check_images runs in each image's environment: the service imports, and neither
# pytest nor the development test kit (voicemesh-testkit, voicemesh.testkit) is installed.


@pytest.fixture
def fake_env(tmp_path: Path) -> tuple[Path, Path]:
    """(python, site-packages) of a new, empty venv holding a service ``voicemesh.fake``."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "voicemesh" / "fake").mkdir(parents=True)
    (site / "voicemesh" / "fake" / "__init__.py").write_text("")
    (site / "voicemesh" / "fake" / "__main__.py").write_text("")
    return venv / "bin" / "python", site


def add_distribution(site: Path, name: str) -> None:
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")


def test_probe_passes_a_clean_environment(fake_env: tuple[Path, Path], tmp_path: Path) -> None:
    python, _ = fake_env
    assert check_images.probe(python, "voicemesh.fake", tmp_path) == ([], [])


def test_probe_reports_a_missing_module(fake_env: tuple[Path, Path], tmp_path: Path) -> None:
    python, _ = fake_env
    problems, testkit = check_images.probe(python, "voicemesh.absent", tmp_path)
    assert testkit == [] and len(problems) == 1 and "ModuleNotFoundError" in problems[0]


@pytest.mark.parametrize("variant", ["distribution", "module", "module needing pytest"])
def test_probe_finds_the_testkit(variant: str, fake_env: tuple[Path, Path], tmp_path: Path) -> None:
    python, site = fake_env
    if variant == "distribution":
        add_distribution(site, "voicemesh-testkit")
    else:
        (site / "voicemesh" / "testkit").mkdir()
        body = "import pytest\n" if variant == "module needing pytest" else ""
        (site / "voicemesh" / "testkit" / "__init__.py").write_text(body)
    problems, testkit = check_images.probe(python, "voicemesh.fake", tmp_path)
    assert len(testkit) == 1
    assert problems == ["the test kit is in the image: " + testkit[0]]


def test_probe_finds_dev_dependencies(fake_env: tuple[Path, Path], tmp_path: Path) -> None:
    python, site = fake_env
    (site / "pytest.py").write_text("")
    problems, _ = check_images.probe(python, "voicemesh.fake", tmp_path)
    assert problems == ["dev dependencies in the image (pytest)"]


def test_probe_finds_the_real_testkit_in_the_workspace(tmp_path: Path) -> None:
    # The development environment has the test kit: the probe must see it there.
    if importlib.util.find_spec("voicemesh.testkit") is None:
        pytest.skip("no test kit in this workspace")
    python = Path(sys.executable)
    problems, testkit = check_images.probe(python, "voicemesh.common", tmp_path)
    assert any(t.startswith("distribution voicemesh-testkit ") for t in testkit)
    assert any("test kit" in p for p in problems)
