"""The cluster of a rehearsal: controllers, Services, endpoints and the network rules.

``Cluster.apply(objects)`` does what ``kubectl apply`` and the controllers do: Namespaces,
ConfigMaps and NetworkPolicies are recorded; each Service gets a ClusterIP (or none, if
headless); Deployments, StatefulSets, DaemonSets and Jobs get their pods, each started by
the kubelet (``kubelet.Pod``). When a pod's readiness changes, the Services' endpoints,
the DNAT rules, the NetworkPolicy rules and every pod's hosts file are rebuilt.

A Cluster is a context manager; it also stops on exit of the interpreter and on SIGTERM,
SIGINT and SIGHUP, so nothing it started outlives it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets as random_names
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from deploy.rehearse import net, netpol, services
from deploy.rehearse.images import Image, Images
from deploy.rehearse.kubelet import Pod, PodContext
from deploy.rehearse.render import Obj, kind, labels, name, namespace

log = logging.getLogger("rehearse")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
#: The rehearsal's own teardown: SIGTERM, then SIGKILL after at most this (or the pod's
#: shorter grace period); deleting a pod during a rehearsal gives it its full grace period.
TEARDOWN_GRACE_S = 10.0
#: Restarts after which a container counts as crash-looping: waiting for it stops there.
CRASH_LOOP = 4
#: Names outside the cluster, on the rehearsal's internet (see net.INTERNET_CIDR).
EXTERNAL_HOSTS = {
    "api.sandbox.push.apple.com": 10,
    "api.push.apple.com": 10,
    "twilio.rehearsal.test": 20,
}


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        #: (namespace, name) -> key -> value: the Secrets, as deploy.sh made them
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, str]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.services: dict[tuple[str, str], tuple[Obj, str | None]] = {}
        self.policies: list[Obj] = []
        self.workloads: dict[tuple[str, str, str], Obj] = {}
        self.pods: list[Pod] = []
        self.deleted: list[Pod] = []
        self.outside: list[subprocess.Popen[bytes]] = []
        self.network = net.Network()
        self.images = Images(directory / "spans.jsonl")
        self._changed = threading.Event()
        self._closed = threading.Event()
        self._reconciler: threading.Thread | None = None
        self._lock = threading.RLock()
        self._previous_handlers: dict[int, Any] = {}
        self.internet_ip = {
            host: str(net.INTERNET_CIDR.network_address + n) for host, n in EXTERNAL_HOSTS.items()
        }

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self.network.start()
            internet = f"{net.NETNS_PREFIX}internet"
            addresses = sorted(set(self.internet_ip.values()))
            self.network.add_namespace(internet, addresses[0], net.INTERNET_CIDR)
            for address in addresses[1:]:
                net.run(
                    net.IP,
                    "-n",
                    internet,
                    "addr",
                    "add",
                    f"{address}/{net.INTERNET_CIDR.prefixlen}",
                    "dev",
                    "eth0",
                )
            self._reconciler = threading.Thread(
                target=self._reconcile_loop, name="reconciler", daemon=True
            )
            self._reconciler.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.close()
        previous = self._previous_handlers.get(signum)
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    def close(self) -> None:
        """Stop every pod (SIGTERM, grace period, SIGKILL) and remove the network; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._changed.set()
        pods = list(self.pods)
        threads = [
            threading.Thread(target=p.stop, kwargs={"pre_stop": False, "grace": TEARDOWN_GRACE_S})
            for p in pods
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for proc in self.outside:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.network.close()
        self.images.close()
        for sig, previous in self._previous_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, previous)
        atexit.unregister(self.close)

    def run_outside(self, netns: str, label: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """A process outside the cluster (a stand-in on the internet), stopped with it."""
        with open(self.directory / f"{label}.log", "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - argv built by the rehearsal
                [net.IP, "netns", "exec", netns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.outside.append(proc)
        return proc

    # --- the API server -------------------------------------------------------------------------

    def apply(self, objects: list[Obj]) -> None:
        """``kubectl apply``: create what is new, update what changed, keep the rest."""
        changed_secrets: set[str] = set()
        with self._lock:
            for obj in objects:
                key, ns = kind(obj), namespace(obj)
                if key == "Namespace":
                    self.namespaces[name(obj)] = {
                        **labels(obj),
                        "kubernetes.io/metadata.name": name(obj),
                    }
                elif key == "ConfigMap":
                    self.config_maps[(ns, name(obj))] = {
                        k: str(v) for k, v in (obj.get("data") or {}).items()
                    }
                elif key == "Secret":
                    data = {
                        k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()
                    }
                    data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
                    self.secrets[(ns, name(obj))] = data
                    changed_secrets.add(ns)
                elif key == "Service":
                    if (ns, name(obj)) not in self.services:
                        headless = (obj.get("spec") or {}).get("clusterIP") == "None"
                        ip = None if headless else self.network.service_ip()
                        self.services[(ns, name(obj))] = (obj, ip)
                elif key == "NetworkPolicy":
                    self.policies = [
                        p for p in self.policies if (namespace(p), name(p)) != (ns, name(obj))
                    ]
                    self.policies.append(obj)
            self.images.prepare(
                {
                    c["image"]
                    for o in objects
                    if kind(o) in WORKLOADS
                    for c in _template(o)["spec"]["containers"]
                }
            )
            for obj in objects:
                if kind(obj) not in WORKLOADS:
                    continue
                identity = (kind(obj), namespace(obj), name(obj))
                previous = self.workloads.get(identity)
                self.workloads[identity] = obj
                if previous is None:
                    for pod_name, extra in _pod_names(obj):
                        self._create_pod(obj, pod_name, extra)
                elif _template(previous) != _template(obj) and kind(obj) != "Job":
                    self.restart_workload(namespace(obj), name(obj))
        for ns in changed_secrets:
            self.secrets_changed(ns)
        self._changed.set()

    def secrets_changed(self, ns: str) -> None:
        """The kubelet's sync of mounted Secrets and ConfigMaps, for the namespace's pods."""
        for pod in [p for p in self.pods if p.namespace == ns]:
            pod.refresh_volumes()

    def workload_pods(self, ns: str, workload: str) -> list[Pod]:
        (owner,) = [w for (_, n_s, n), w in self.workloads.items() if (n_s, n) == (ns, workload)]
        # A Job has no selector in its manifest (the API server makes one): its labels.
        selector = (owner["spec"].get("selector") or {}).get("matchLabels")
        if selector is None:
            selector = (_template(owner).get("metadata") or {}).get("labels") or {}
        return self.pods_of(ns, selector)

    def workload_ready(self, ns: str, workload: str) -> bool:
        """Every pod of the workload ready (a Job: its pod has succeeded)."""
        pods = self.workload_pods(ns, workload)
        (owner,) = [w for (_, n_s, n), w in self.workloads.items() if (n_s, n) == (ns, workload)]
        if kind(owner) in ("Deployment", "StatefulSet"):
            if len(pods) != int(owner["spec"].get("replicas", 1)):
                return False
        return bool(pods) and all(
            p.succeeded if p.spec.get("restartPolicy", "Always") != "Always" else p.ready
            for p in pods
        )

    def restart_workload(self, ns: str, workload: str) -> None:
        """``kubectl rollout restart``: each pod replaced in turn (surge 1), in the background."""

        def roll() -> None:
            for pod in self.workload_pods(ns, workload):
                if self._closed.is_set():
                    return
                with contextlib.suppress(RuntimeError):  # the rehearsal stopped meanwhile
                    self.delete_pod(pod)

        threading.Thread(target=roll, name=f"rollout {ns}/{workload}", daemon=True).start()

    def _create_pod(self, owner: Obj, pod_name: str, extra_labels: dict[str, str]) -> Pod:
        if self._closed.is_set():
            raise RuntimeError("the rehearsal stopped")
        template = _template(owner)
        meta = template.get("metadata") or {}
        obj = {
            "metadata": {
                "name": pod_name,
                "namespace": namespace(owner),
                "labels": {**(meta.get("labels") or {}), **extra_labels},
                "annotations": meta.get("annotations") or {},
            },
            "spec": json.loads(json.dumps(template["spec"])),
        }
        spec = obj["spec"]
        if kind(owner) == "Job":
            spec.setdefault("restartPolicy", "OnFailure")
        host_network = bool(spec.get("hostNetwork"))
        ip = net.NODE_IP if host_network else self.network.pod_ip()
        netns = None if host_network else f"{net.NETNS_PREFIX}{len(self.network.namespaces)}"
        if netns:
            self.network.add_namespace(netns, ip)
        directory = self.directory / "pods" / namespace(owner) / pod_name
        pod = Pod(obj, ip, netns, directory, self._context())
        for claim in (owner.get("spec") or {}).get("volumeClaimTemplates") or []:
            path = (
                self.directory
                / "volumes"
                / namespace(owner)
                / f"{claim['metadata']['name']}-{pod_name}"
            )
            path.mkdir(parents=True, exist_ok=True)
            pod.claims[claim["metadata"]["name"]] = path
        with self._lock:
            self.pods.append(pod)
            # As a CNI with a policy controller: the pod's rules exist before it runs.
            self.reconcile()
        pod.start()
        return pod

    def _context(self) -> PodContext:
        context = PodContext(
            config_maps=lambda ns, n: self.config_maps.get((ns, n)),
            secrets=lambda ns, n: self.secrets.get((ns, n)),
            service_links=self._service_links,
            image=self._image,
            on_change=self._changed.set,
        )
        return context

    def _image(self, reference: str) -> Image:
        return self.images.resolve(reference)

    def _service_links(self, ns: str) -> dict[str, str]:
        return services.links(self.services, ns)

    # --- queries and actions --------------------------------------------------------------------

    def pods_of(self, ns: str, selector: dict[str, str]) -> list[Pod]:
        return [
            p
            for p in self.pods
            if p.namespace == ns and netpol.matches({"matchLabels": selector}, p.labels)
        ]

    def pod(self, ns: str, pod_name: str) -> Pod:
        (found,) = [p for p in self.pods if p.namespace == ns and p.name == pod_name]
        return found

    def service_ip(self, ns: str, service: str) -> str:
        ip = self.services[(ns, service)][1]
        if ip is None:
            raise ValueError(f"{ns}/{service} is headless")
        return ip

    def delete_pod(self, pod: Pod, replace: bool = True) -> Pod | None:
        """Delete ``pod`` (preStop, grace period); its controller makes a new one."""
        with self._lock:
            self.pods.remove(pod)
            self.deleted.append(pod)
        pod.stop()
        self._changed.set()
        owner = next(
            (
                w
                for (k, ns, n), w in self.workloads.items()
                if ns == pod.namespace and pod.name.startswith(n + "-")
            ),
            None,
        )
        if not replace or owner is None or kind(owner) == "Job":
            return None
        new_name = pod.name if kind(owner) == "StatefulSet" else _random_name(owner)
        extra = {
            k: v
            for k, v in pod.labels.items()
            if k not in (_template(owner).get("metadata") or {}).get("labels", {})
        }
        return self._create_pod(owner, new_name, extra)

    def wait(self, what: Callable[[], bool], timeout: float, describe: str) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{describe} after {timeout:.0f}s:\n{self.status()}")
            if self._closed.is_set():
                raise RuntimeError("the rehearsal stopped")
            looping = self.crash_looping()
            if looping:
                raise TimeoutError(f"{describe}: {looping}")
            time.sleep(0.25)

    def crash_looping(self) -> str:
        """A container that keeps failing (CRASH_LOOP restarts), with its last log lines."""
        for pod in self.pods:
            for container in pod.containers:
                if container.restarts >= CRASH_LOOP:
                    lines = container.log_path.read_text(errors="replace").splitlines()
                    tail = "\n    ".join(line[:300] for line in lines[-4:])
                    return f"{pod.namespace}/{pod.name}/{container.name} crash-loops:\n    {tail}"
        return ""

    def ready(self, ns: str | None = None) -> bool:
        workloads = [(n_s, n) for (_, n_s, n) in self.workloads if ns is None or n_s == ns]
        return bool(workloads) and all(self.workload_ready(*w) for w in workloads)

    def restarts(self) -> int:
        return sum(
            c.restarts
            for p in [*self.pods, *self.deleted]
            for c in p.containers
            if p.spec.get("restartPolicy", "Always") == "Always"
        )

    def status(self) -> str:
        lines = []
        for pod in self.pods:
            states = ", ".join(
                f"{c.name}={'ready' if c.ready else c.reason or c.state}"
                + (f"(restarts {c.restarts})" if c.restarts else "")
                for c in pod.containers
            )
            lines.append(f"  {pod.namespace}/{pod.name} {pod.ip}: {states}")
        return "\n".join(lines)

    # --- endpoints, rules, hosts ----------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        while not self._closed.is_set():
            self._changed.wait()
            if self._closed.is_set():
                return
            self._changed.clear()
            try:
                self.reconcile()
            except Exception:
                log.exception("reconciling the network failed")
            time.sleep(0.05)

    def endpoints(self, ns: str, service: Obj) -> list[Pod]:
        spec = service.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            return []
        pods = self.pods_of(ns, selector)
        return pods if spec.get("publishNotReadyAddresses") else [p for p in pods if p.ready]

    def reconcile(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            nat = services.nat_rules(self.services, self.endpoints)  # type: ignore[arg-type]
            pods = [
                netpol.PodAddress(p.name, p.namespace, p.ip, p.labels, _ports(p), p.netns is None)
                for p in self.pods
            ]
            filters = netpol.Translator(self.policies, pods, self.namespaces).rules()
            filters[netpol.FORWARD].insert(1, ["-d", str(net.SERVICE_CIDR), "-j", "REJECT"])
            self.network.apply({"nat": nat, "filter": filters})
            self._write_hosts()

    def _write_hosts(self) -> None:
        subdomain = functools.partial(_owner_service, self)
        entries = services.hosts_entries(self.services, self.endpoints, subdomain)  # type: ignore[arg-type]
        for pod in self.pods:
            text = services.hosts_file(entries, pod.namespace, (pod.ip, pod.name), self.internet_ip)
            # In place: each container bind-mounted this very file (inode) at /etc/hosts.
            with open(pod.hosts_path, "r+") as f:
                if f.read() != text:
                    f.seek(0)
                    f.write(text)
                    f.truncate()


def _owner_service(cluster: Cluster, pod: Pod) -> str | None:
    if pod.spec.get("subdomain"):
        return str(pod.spec["subdomain"])
    for (k, ns, n), workload in cluster.workloads.items():
        if k == "StatefulSet" and ns == pod.namespace and pod.name.rsplit("-", 1)[0] == n:
            return str(workload["spec"].get("serviceName"))
    return None


def _ports(pod: Pod) -> dict[str, int]:
    return {
        str(p["name"]): int(p["containerPort"])
        for c in pod.containers
        for p in c.spec.get("ports") or []
        if p.get("name")
    }


def _template(owner: Obj) -> Obj:
    template: Obj = owner["spec"]["template"]
    return template


def _random_name(owner: Obj) -> str:
    digest = hashlib.sha256(json.dumps(_template(owner), sort_keys=True).encode()).hexdigest()[:10]
    if kind(owner) in ("DaemonSet", "Job"):
        return f"{name(owner)}-{random_names.token_hex(3)[:5]}"
    return f"{name(owner)}-{digest}-{random_names.token_hex(3)[:5]}"


def _pod_names(owner: Obj) -> Iterator[tuple[str, dict[str, str]]]:
    spec = owner.get("spec") or {}
    if kind(owner) == "StatefulSet":
        for i in range(int(spec.get("replicas", 1))):
            pod_name = f"{name(owner)}-{i}"
            yield (
                pod_name,
                {
                    "statefulset.kubernetes.io/pod-name": pod_name,
                    "apps.kubernetes.io/pod-index": str(i),
                },
            )
    elif kind(owner) == "Deployment":
        for _ in range(int(spec.get("replicas", 1))):
            yield _random_name(owner), {}
    else:  # DaemonSet: the one node; Job: one pod (parallelism 1)
        yield _random_name(owner), {}


def is_root() -> bool:
    return os.geteuid() == 0
