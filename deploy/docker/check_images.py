"""Run each image's uv steps without Docker, import its service, look for the test kit.

Every image is built from ``deploy/docker/Dockerfile`` with ``--build-arg SERVICE=<image>``;
the images are that Dockerfile's ``image-<name>`` stages (the one list of them). Each image
installs only its own package's locked dependencies (``uv sync --locked --package
voicemesh-${SERVICE} --no-dev``), so a module that imports a library its package does not
declare works in the workspace (where every package is installed) and fails in the image.

For each image this script runs the build stage's ``uv sync`` commands, read from the
Dockerfile with SERVICE substituted, in a scratch directory (the build context minus
``.dockerignore``: the manifests alone, then everything), then, with the resulting
environment, imports ``voicemesh.<image>`` and checks that neither pytest nor the
development-only test kit (distribution ``voicemesh-testkit``, module ``voicemesh.testkit``)
is in it, and prints a table.

    uv run python deploy/docker/check_images.py            # every image
    uv run python deploy/docker/check_images.py crm agent  # some
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
IMAGE_STAGE = "image-"  # the last stage of the image built with SERVICE=<name> is image-<name>
BUILD_STAGE = "build"  # the stage that runs `uv sync`
TESTKIT_DISTRIBUTION = "voicemesh-testkit"
TESTKIT_MODULE = "voicemesh.testkit"

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    word: str  # upper case: FROM, RUN, COPY…
    args: str  # continuation lines joined, variables not expanded


@dataclass(frozen=True)
class Stage:
    name: str
    base: str  # FROM's image or stage, variables not expanded
    steps: tuple[Instruction, ...]


@dataclass(frozen=True)
class Dockerfile:
    args: dict[str, str]  # the ARGs before the first FROM, with their defaults ("" if none)
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage:
        (found,) = [s for s in self.stages if s.name == name]
        return found

    def images(self) -> list[str]:
        """The images this Dockerfile builds: the SERVICE values with an image-<name> stage."""
        return [s.name.removeprefix(IMAGE_STAGE) for s in self.stages if is_image_stage(s.name)]

    def build_args(self, image: str) -> dict[str, str]:
        return {**self.args, "SERVICE": image}

    def chain(self, image: str) -> list[Stage]:
        """The stages the image is made of, base first, following FROM <stage> from the last."""
        names = {s.name for s in self.stages}
        build_args = self.build_args(image)
        out = [self.stages[-1]]
        while (base := expand(out[-1].base, build_args)) in names:
            out.append(self.stage(base))
        return out[::-1]

    def uv_syncs(self, image: str) -> list[tuple[list[str], str]]:
        """The build stage's ``uv sync`` commands for ``image`` (arguments after ``uv``), each
        with what its working directory holds then: ``"manifests"`` or ``"context"``."""
        build = self.stage(BUILD_STAGE)
        variables = dict(self.build_args(image))
        holds = "nothing"
        out = []
        for step in build.steps:
            if step.word == "ARG":
                name, _, default = step.args.partition("=")
                variables.setdefault(name, default)
            elif step.word == "COPY":
                if step.args.startswith("--from=manifests "):
                    holds = "manifests"
                elif step.args == ". .":
                    holds = "context"
            elif step.word == "RUN":
                words = [w for w in shlex.split(step.args) if not w.startswith("--mount=")]
                for command in " ".join(words).split("&&"):
                    argv = shlex.split(expand(command, variables))
                    if argv[:2] == ["uv", "sync"]:
                        out.append((argv[1:], holds))
        return out


def is_image_stage(name: str) -> bool:
    return name.startswith(IMAGE_STAGE) and "$" not in name


def expand(text: str, variables: dict[str, str]) -> str:
    """``${NAME}`` and ``$NAME`` replaced by their values; unknown ones are left alone."""
    return _VARIABLE.sub(lambda m: variables.get(m[1] or m[2], m[0]), text)


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions: continuation lines joined, comments and blanks dropped."""
    out = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and logical):
            continue  # comments, and blank lines, may sit inside a continued instruction
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        if logical.strip():
            word, _, rest = logical.strip().partition(" ")
            out.append(Instruction(word.upper(), " ".join(rest.split())))
        logical = ""
    return out


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    name, base = "", ""
    steps: list[Instruction] = []
    for step in instructions(path.read_text()):
        if step.word == "FROM":
            if base:
                stages.append(Stage(name, base, tuple(steps)))
            words = step.args.split()
            words = [w for w in words if not w.startswith("--platform=")]
            base = words[0]
            name = words[2].lower() if len(words) == 3 and words[1].upper() == "AS" else ""
            steps = []
        elif not base:
            if step.word == "ARG":
                arg, _, default = step.args.partition("=")
                global_args[arg] = default
        else:
            steps.append(step)
    if base:
        stages.append(Stage(name, base, tuple(steps)))
    return Dockerfile(global_args, tuple(stages))


@dataclass(frozen=True)
class Result:
    image: str
    ok: bool
    testkit: str  # "absent", "PRESENT" or "-" (not checked: the uv steps failed)
    seconds: float
    size_mb: float
    detail: str


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rules, closely enough for this repository: last match wins, ``!`` keeps."""
    verdict = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        bare = pattern.lstrip("!")
        candidates = {bare, bare.removeprefix("**/")}
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for p in [*prefixes, parts[-1]] for c in candidates):
            verdict = not keep
    return verdict


def build_context(dest: Path) -> None:
    patterns = ignore_patterns()
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if not path.is_file() or ignored(relative, patterns):
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def uv(args: list[str], cwd: Path, venv: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_LINK_MODE": "copy",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON": sys.executable,
    }
    env.pop("VIRTUAL_ENV", None)
    binary = shutil.which("uv")
    if binary is None:
        raise SystemExit("uv not found on PATH")
    return subprocess.run(  # noqa: S603 - uv with arguments from the Dockerfile
        [binary, *args, "-q"], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


# Run by the image's python (isolated: no PYTHONPATH, no current directory on sys.path). Prints
# {"problems": [...], "testkit": [...]}: what is wrong, and which traces of the test kit exist.
PROBE = """
import importlib, importlib.metadata as md, importlib.util as u, json, sys
module, distribution, testkit_module = sys.argv[1:4]
testkit = []
try:
    testkit.append(f"distribution {distribution} {md.distribution(distribution).version}")
except md.PackageNotFoundError:
    pass
try:
    importlib.import_module(testkit_module)
    testkit.append(f"import {testkit_module} works")
except ModuleNotFoundError as e:
    if e.name != testkit_module and not testkit_module.startswith(f"{e.name}."):
        testkit.append(f"{testkit_module} is there, its import needs {e.name}")
except Exception as e:
    testkit.append(f"{testkit_module} is there, its import raises {type(e).__name__}")
problems = []
try:
    importlib.import_module(module)
    if u.find_spec(f"{module}.__main__") is None:
        problems.append(f"no {module}.__main__")
    else:  # the entry point's own imports, as the container's first command runs them
        importlib.import_module(f"{module}.__main__")
except Exception as e:
    problems.append(f"import {module}: {type(e).__name__}: {e}")
if u.find_spec("pytest") is not None:
    problems.append("dev dependencies in the image (pytest)")
if testkit:
    problems.append("the test kit is in the image: " + "; ".join(testkit))
print(json.dumps({"problems": problems, "testkit": testkit}))
"""


def probe(python: Path, module: str, cwd: Path) -> tuple[list[str], list[str]]:
    """(problems, traces of the test kit) of the environment of ``python``."""
    result = subprocess.run(  # noqa: S603 - an environment's own python
        [str(python), "-I", "-c", PROBE, module, TESTKIT_DISTRIBUTION, TESTKIT_MODULE],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"probe failed: {tail}"], []
    found = json.loads(lines[-1])
    return list(found["problems"]), list(found["testkit"])


def check(image: str, dockerfile: Dockerfile, context: Path, scratch: Path) -> Result:
    start = time.monotonic()
    syncs = dockerfile.uv_syncs(image)
    if [where for _, where in syncs] != ["manifests", "context"]:
        detail = f"expected a `uv sync` on the manifests, then on the context: {syncs}"
        return Result(image, False, "-", 0.0, 0.0, detail)
    work = scratch / image
    manifests = work / "manifests"
    shutil.copytree(context, manifests)
    for path in sorted(manifests.rglob("*"), reverse=True):
        if path.is_file() and path.name not in {"pyproject.toml", "uv.lock"}:
            path.unlink()
    venv = work / "venv"
    for args, where in syncs:
        result = uv(args, manifests if where == "manifests" else context, venv)
        if result.returncode != 0:
            detail = f"uv {' '.join(args)}: {result.stderr.strip()[-300:]}"
            return Result(image, False, "-", time.monotonic() - start, 0.0, detail)
    module = f"voicemesh.{image}"
    problems, testkit = probe(venv / "bin" / "python", module, work)
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 1e6
    detail = "; ".join(problems)[:160] if problems else f"imports {module}"
    seconds = time.monotonic() - start
    return Result(image, not problems, "PRESENT" if testkit else "absent", seconds, size, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="e.g. crm agent (default: every image)")
    args = parser.parse_args(argv)
    dockerfile = parse()
    found = dockerfile.images()
    wanted = args.images or found
    unknown = [i for i in wanted if i not in found]
    if unknown:
        parser.error(f"{DOCKERFILE.relative_to(ROOT)} builds no {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="vm-images-") as tmp:
        context = Path(tmp) / "context"
        build_context(context)
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda i: check(i, dockerfile, context, Path(tmp)), wanted))
    print(f"{'image':<12} {'result':<6} {'testkit':<8} {'venv MB':>8} {'seconds':>8}  detail")
    for r in results:
        status = "ok" if r.ok else "FAIL"
        print(
            f"{r.image:<12} {status:<6} {r.testkit:<8} {r.size_mb:>8.0f} {r.seconds:>8.1f}"
            f"  {r.detail}"
        )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
