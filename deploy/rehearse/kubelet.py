"""Pods and containers, run as the kubelet runs them.

A container runs its image's entrypoint (``images``) with the Pod's ``command``/``args``,
in the pod's network namespace and in a mount namespace of its own, where its volumes are
bind-mounted at their ``mountPath`` and the pod's hosts file at ``/etc/hosts``. Its
environment is exactly what the Pod spec renders to (``envFrom``, ``env`` with ConfigMap,
Secret and downward API values, ``$(VAR)`` expansion, Service links) over the image's ENV.
A missing ConfigMap or Secret holds the container back, as CreateContainerConfigError.

Probes: the startup probe gates the others; liveness failures restart the container (with
the pod's grace period, preStop first); readiness decides whether the pod is a Service
endpoint. Exits restart by ``restartPolicy``, with the kubelet's back-off (10 s doubling,
at most 5 minutes). Stopping a container runs preStop, sends SIGTERM and, when the grace
period is over, SIGKILL to what is left.

The processes run as root: the images' numeric users do not exist on this machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.rehearse.images import Image
from deploy.rehearse.net import IP, remember
from deploy.rehearse.probes import Probe
from deploy.rehearse.render import Obj

log = logging.getLogger("rehearse")

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0


class ConfigMissing(Exception):
    """A ConfigMap, Secret or key the container needs does not exist (yet)."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` is ``$``; unknown references stay as they are."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return _REFERENCE.sub(one, text)


@dataclass
class PodContext:
    """What the kubelet reads from the API server for one pod."""

    config_maps: Callable[[str, str], dict[str, str] | None]
    secrets: Callable[[str, str], dict[str, str] | None]
    service_links: Callable[[str], dict[str, str]]
    image: Callable[[str], Image]
    on_change: Callable[[], None]


class Container:
    def __init__(self, pod: Pod, spec: Obj) -> None:
        self.pod = pod
        self.spec = spec
        self.name = str(spec["name"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.ready = False
        self.started = False
        self.state = "Waiting"
        self.reason = "ContainerCreating"
        self.exit_codes: list[int] = []
        self.liveness_restarts = 0
        self._next_start = 0.0
        self._backoff = BACKOFF_START
        self._thread = threading.Thread(
            target=self._run, name=f"{pod.name}/{self.name}", daemon=True
        )
        self.log_path = pod.directory / f"{self.name}.log"

    # --- environment -------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The rendered environment (without the image's ENV); raises ConfigMissing."""
        pod = self.pod
        env: dict[str, str] = {}
        if pod.spec.get("enableServiceLinks", True):
            env.update(pod.context.service_links(pod.namespace))
        for source in self.spec.get("envFrom") or []:
            prefix = str(source.get("prefix", ""))
            ref = source.get("configMapRef") or source.get("secretRef")
            lookup = pod.context.config_maps if "configMapRef" in source else pod.context.secrets
            data = lookup(pod.namespace, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigMissing(
                    f"{'ConfigMap' if 'configMapRef' in source else 'Secret'} {ref['name']}"
                )
            env.update({prefix + k: v for k, v in data.items()})
        for item in self.spec.get("env") or []:
            if "value" in item or "valueFrom" not in item:
                env[item["name"]] = expand(str(item.get("value", "")), env)
                continue
            value = self._value_from(item["valueFrom"])
            if value is not None:
                env[item["name"]] = value
        return env

    def _value_from(self, source: Obj) -> str | None:
        pod = self.pod
        for key, lookup, what in (
            ("configMapKeyRef", pod.context.config_maps, "ConfigMap"),
            ("secretKeyRef", pod.context.secrets, "Secret"),
        ):
            if key in source:
                ref = source[key]
                data = lookup(pod.namespace, ref["name"])
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    raise ConfigMissing(f"{what} {ref['name']} key {ref['key']}")
                return data[ref["key"]]
        if "fieldRef" in source:
            return pod.field(str(source["fieldRef"]["fieldPath"]))
        raise ValueError(f"unsupported valueFrom {sorted(source)} in {pod.name}/{self.name}")

    # --- processes ---------------------------------------------------------------------------

    def launch(self, argv: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
        """``argv`` in this container's namespaces, with its mounts, in a new session."""
        pod = self.pod
        lines = [
            f"mount --bind {shlex.quote(str(pod.hosts_path))} /etc/hosts",
            f"mount --bind {shlex.quote(str(pod.resolv_path))} /etc/resolv.conf",
        ]
        mounts = []
        for mount in self.spec.get("volumeMounts") or []:
            source = pod.volume_path(str(mount["name"]))
            if mount.get("subPath"):
                source = source / str(mount["subPath"])
            mounts.append((source, Path(str(mount["mountPath"])), bool(mount.get("readOnly"))))
        # A mount over a directory that holds volume sources (e.g. /tmp) hides them: last.
        sources = [source for source, _, _ in mounts]
        mounts.sort(key=lambda m: any(s.is_relative_to(m[1]) for s in sources))
        for source, target, read_only in mounts:
            if not target.exists():
                # The mount point is made on this machine and removed when the rehearsal ends.
                for missing in [p for p in (target, *target.parents) if not p.exists()]:
                    remember(path=str(missing))
                if source.is_dir():
                    target.mkdir(parents=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()
            lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {shlex.quote(str(target))}")
        if (self.spec.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            lines.append("mount -o remount,bind,ro /")
        script = " && ".join(lines) + ' && exec "$@"'
        if pod.fs_group is not None:  # the container's processes are in the fsGroup
            argv = ["/usr/bin/setpriv", f"--groups={pod.fs_group}", "--", *argv]
        if pod.netns:
            wrapper = [IP, "netns", "exec", pod.netns]
        else:  # hostNetwork: the node's network, a mount namespace of its own
            wrapper = ["/usr/bin/unshare", "--mount", "--propagation", "private"]
        return subprocess.Popen(  # noqa: S603 - the container's own command
            [*wrapper, "/bin/sh", "-c", script, self.name, *argv],
            env=env,
            start_new_session=True,
            **popen,
        )

    def _start(self) -> None:
        env = self.environment()
        self.pod.materialize_volumes(self.spec)
        image = self.pod.context.image(str(self.spec["image"]))
        command = [expand(str(c), env) for c in self.spec.get("command") or []] or None
        args_spec = self.spec.get("args")
        args = [expand(str(a), env) for a in args_spec] if args_spec is not None else None
        argv = image.argv(command, args)
        full_env = {**image.env, **env}
        with open(self.log_path, "ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')} {shlex.join(argv)}\n".encode())
            out.flush()
            self.proc = self._launch_main(
                argv,
                full_env,
                cwd=self.spec.get("workingDir") or image.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.state, self.reason = "Running", ""
        self.started = "startupProbe" not in self.spec

    def _launch_main(
        self, argv: list[str], env: dict[str, str], **popen: Any
    ) -> subprocess.Popen[bytes]:
        proc = self.launch(argv, env, **popen)
        if self.pod.netns is None:  # outside any namespace the rehearsal deletes
            remember(pid=proc.pid)
        return proc

    def exec(self, argv: list[str], timeout: float, stdin: str = "") -> tuple[int, str]:
        """Run ``argv`` inside the running container (``kubectl exec``, exec probes)."""
        env = {**self.pod.context.image(str(self.spec["image"])).env, **self.environment()}
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
        proc = self.launch(argv, env, **pipes)
        try:
            out, _ = proc.communicate(stdin.encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.communicate()
            return -1, "timeout"
        return proc.returncode, out.decode(errors="replace")

    def stop(self, grace: float, pre_stop: bool = True) -> None:
        """preStop, SIGTERM, then SIGKILL when ``grace`` seconds have passed since the start."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        deadline = time.monotonic() + grace
        hook = ((self.spec.get("lifecycle") or {}).get("preStop") or {}) if pre_stop else {}
        if "exec" in hook:
            self.exec(list(hook["exec"]["command"]), max(0.1, deadline - time.monotonic()))
        elif "sleep" in hook:
            time.sleep(min(float(hook["sleep"]["seconds"]), max(0.0, deadline - time.monotonic())))
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning(
                "%s/%s: SIGKILL after the grace period (%.0fs)", self.pod.name, self.name, grace
            )
        _kill_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the container's processes (a crash, as a fault to inject)."""
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGKILL)

    # --- the kubelet's loop -------------------------------------------------------------------

    def _run(self) -> None:
        probes: dict[str, Probe] = {
            k: Probe(self, k, self.spec[k])
            for k in ("startupProbe", "livenessProbe", "readinessProbe")
            if k in self.spec
        }
        while not self.pod.stopping:
            if self.proc is None:
                if time.monotonic() < self._next_start:
                    time.sleep(0.2)
                    continue
                try:
                    self._start()
                except ConfigMissing as exc:
                    self.state, self.reason = "Waiting", f"CreateContainerConfigError: {exc}"
                    time.sleep(0.5)
                    continue
                for probe in probes.values():
                    probe.reset()
                self._set_ready("readinessProbe" not in probes and self.started)
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                self._exited(code)
                if self.state == "Terminated":
                    return
                continue
            self._probe(probes)
            time.sleep(0.1)

    def _probe(self, probes: dict[str, Probe]) -> None:
        if not self.started:
            startup = probes["startupProbe"]
            result = startup.due()
            if result is True:
                self.started = True
                self._set_ready("readinessProbe" not in probes)
            elif result is False and startup.failures >= startup.threshold:
                self._restart_unhealthy("startup")
            return
        liveness = probes.get("livenessProbe")
        if (
            liveness is not None
            and liveness.due() is False
            and liveness.failures >= liveness.threshold
        ):
            self._restart_unhealthy("liveness")
            return
        readiness = probes.get("readinessProbe")
        if readiness is not None:
            result = readiness.due()
            if result is True and readiness.successes >= readiness.success_threshold:
                self._set_ready(True)
            elif result is False and readiness.failures >= readiness.threshold:
                self._set_ready(False)

    def _restart_unhealthy(self, which: str) -> None:
        log.warning("%s/%s: %s probe failed, restarting", self.pod.name, self.name, which)
        self.liveness_restarts += 1
        self._set_ready(False)
        self.stop(self.pod.grace)

    def _exited(self, code: int) -> None:
        self.exit_codes.append(code)
        self._set_ready(False)
        self.proc = None
        self.started = False
        policy = self.pod.spec.get("restartPolicy", "Always")
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            self.state, self.reason = "Terminated", "Completed" if code == 0 else "Error"
            return
        self.restarts += 1
        self.state, self.reason = "Waiting", "CrashLoopBackOff"
        self._next_start = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self.pod.context.on_change()


class Pod:
    def __init__(
        self, obj: Obj, ip: str, netns: str | None, directory: Path, context: PodContext
    ) -> None:
        self.obj = obj
        self.spec: Obj = obj["spec"]
        self.name = str(obj["metadata"]["name"])
        self.namespace = str(obj["metadata"]["namespace"])
        self.labels: dict[str, str] = dict(obj["metadata"].get("labels") or {})
        self.ip, self.netns, self.directory, self.context = ip, netns, directory, context
        self.grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        self.stopping = False
        directory.mkdir(parents=True, exist_ok=True)
        self.hosts_path = directory / "hosts"
        self.hosts_path.write_text("127.0.0.1 localhost\n")
        # Names are in the hosts file; no name server answers (refused at once, no waiting).
        self.resolv_path = directory / "resolv.conf"
        self.resolv_path.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.claims: dict[str, Path] = {}
        self.containers = [Container(self, c) for c in self.spec["containers"]]
        self.created = time.monotonic()

    @property
    def ready(self) -> bool:
        return all(c.ready for c in self.containers)

    @property
    def succeeded(self) -> bool:
        return all(c.state == "Terminated" and c.exit_codes[-1:] == [0] for c in self.containers)

    def start(self) -> None:
        for container in self.containers:
            container._thread.start()

    def stop(self, pre_stop: bool = True, grace: float | None = None) -> None:
        """Delete the pod: every container stops within the pod's grace period."""
        self.stopping = True
        seconds = self.grace if grace is None else min(grace, self.grace)
        threads = [
            threading.Thread(target=c.stop, args=(seconds, pre_stop)) for c in self.containers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.context.on_change()

    def container(self, name: str) -> Container:
        (found,) = [c for c in self.containers if c.name == name]
        return found

    def field(self, path: str) -> str:
        values = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "status.podIP": self.ip,
            "status.hostIP": self.ip if self.netns is None else "",
            "spec.nodeName": "rehearsal",
            "spec.serviceAccountName": str(self.spec.get("serviceAccountName", "default")),
        }
        label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
        if label:
            return self.labels.get(label[1], "")
        if path not in values:
            raise ValueError(f"unsupported fieldRef {path} in {self.name}")
        return values[path]

    def port(self, port: Any) -> int:
        if isinstance(port, int):
            return port
        for container in self.containers:
            for item in container.spec.get("ports") or []:
                if item.get("name") == port:
                    return int(item["containerPort"])
        raise ValueError(f"{self.name} has no port named {port}")

    def volume_path(self, name: str) -> Path:
        return self.claims.get(name, self.directory / "volumes" / name)

    def refresh_volumes(self) -> None:
        """Rewrite the mounted ConfigMaps and Secrets from their current data."""
        for container in self.containers:
            if container.proc is not None:
                with contextlib.suppress(ConfigMissing):
                    self.materialize_volumes(container.spec)

    @property
    def fs_group(self) -> int | None:
        group = (self.spec.get("securityContext") or {}).get("fsGroup")
        return None if group is None else int(group)

    def _own(self, path: Path) -> None:
        """fsGroup: the volume's files belong to the group, which may read them."""
        if self.fs_group is not None:
            os.chown(path, 0, self.fs_group)
            path.chmod(path.stat().st_mode | (0o550 if path.is_dir() else 0o440))

    def materialize_volumes(self, container: Obj) -> None:
        """Write the volumes ``container`` mounts (ConfigMaps and Secrets as files)."""
        wanted = {m["name"] for m in container.get("volumeMounts") or []}
        for volume in self.spec.get("volumes") or []:
            name = str(volume["name"])
            if name not in wanted or name in self.claims:
                continue
            path = self.volume_path(name)
            path.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in volume:
                path.chmod(0o777)
                continue
            for key, lookup in (
                ("configMap", self.context.config_maps),
                ("secret", self.context.secrets),
            ):
                if key in volume:
                    source = volume[key]
                    ref = str(source.get("name") or source.get("secretName"))
                    data = lookup(self.namespace, ref)
                    if data is None:
                        if source.get("optional"):
                            break
                        raise ConfigMissing(f"{key} volume {ref}")
                    mode = int(source.get("defaultMode", 0o644))
                    items = source.get("items") or [{"key": k, "path": k} for k in data]
                    for item in items:
                        target = path / str(item["path"])
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_text(data[str(item["key"])])
                        target.chmod(int(item.get("mode", mode)))
                        self._own(target)
                    self._own(path)
                    break
            else:
                raise ValueError(f"unsupported volume {name} in {self.name}: {sorted(volume)}")


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
