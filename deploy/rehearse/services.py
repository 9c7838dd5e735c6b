"""Services, as kube-proxy (iptables mode), the cluster DNS and the kubelet see them.

* ``links``: the variables Kubernetes adds to a container for each Service of its
  namespace (``enableServiceLinks``);
* ``nat_rules``: a chain per Service port that spreads new connections over the ready
  endpoints (DNAT, random probability), with masquerading when a pod reaches itself;
* ``hosts_entries``: the names a pod resolves (its hosts file): every Service's names to its
  ClusterIP, a headless Service's names to its endpoints and each StatefulSet pod's own name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Protocol

from deploy.rehearse.render import Obj

#: (namespace, name) -> (the Service, its ClusterIP or None when headless)
Services = Mapping[tuple[str, str], tuple[Obj, str | None]]
MASQUERADE_MARK = "0x4000"


class Endpoint(Protocol):
    name: str
    ip: str

    def port(self, port: object) -> int: ...


def links(services: Services, ns: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for (service_ns, service_name), (obj, ip) in services.items():
        if service_ns != ns or ip is None:
            continue
        prefix = service_name.upper().replace("-", "_")
        for i, port in enumerate(obj["spec"].get("ports") or []):
            proto, number = str(port.get("protocol", "TCP")), port["port"]
            url = f"{proto.lower()}://{ip}:{number}"
            if i == 0:
                env[f"{prefix}_SERVICE_HOST"] = ip
                env[f"{prefix}_SERVICE_PORT"] = str(number)
                env[f"{prefix}_PORT"] = url
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{str(port['name']).upper().replace('-', '_')}"] = str(
                    number
                )
            base = f"{prefix}_PORT_{number}_{proto}"
            env.update({base: url, f"{base}_PROTO": proto.lower(), f"{base}_PORT": str(number)})
            env[f"{base}_ADDR"] = ip
    return env


def nat_rules(
    services: Services, endpoints: Callable[[str, Obj], list[Endpoint]]
) -> dict[str, list[list[str]]]:
    nat: dict[str, list[list[str]]] = {"VMRH-SERVICES": [], "VMRH-POSTROUTING": []}
    nat["VMRH-POSTROUTING"].append(
        ["-m", "mark", "--mark", f"{MASQUERADE_MARK}/{MASQUERADE_MARK}", "-j", "MASQUERADE"]
    )
    for index, ((ns, _), (obj, ip)) in enumerate(sorted(services.items(), key=lambda i: i[0])):
        if ip is None:
            continue
        ready = endpoints(ns, obj)
        for j, port in enumerate(obj["spec"].get("ports") or []):
            chain = f"VMRH-S{index}-{j}"
            proto = str(port.get("protocol", "TCP")).lower()
            nat["VMRH-SERVICES"].append(
                ["-d", f"{ip}/32", "-p", proto, "--dport", str(port["port"]), "-j", chain]
            )
            rules: list[list[str]] = []
            target = port.get("targetPort", port["port"])
            for k, pod in enumerate(ready):
                with contextlib.suppress(ValueError):  # the pod has no such port
                    to = f"{pod.ip}:{pod.port(target)}"
                    left = len(ready) - k
                    chance = ["-m", "statistic", "--mode", "random", "--probability"]
                    chance = [*chance, f"{1 / left:.5f}"] if left > 1 else []
                    rules.append(["-s", f"{pod.ip}/32", "-j", "MARK", "--or-mark", MASQUERADE_MARK])
                    rules.append([*chance, "-p", proto, "-j", "DNAT", "--to-destination", to])
            nat[chain] = rules
    return nat


def hosts_entries(
    services: Services,
    endpoints: Callable[[str, Obj], list[Endpoint]],
    subdomain: Callable[[Endpoint], str | None],
) -> list[tuple[str, str, str]]:
    """(address, namespace, names) lines; ``subdomain``: a pod's headless Service, if any."""
    entries: list[tuple[str, str, str]] = []
    for (ns, service_name), (obj, ip) in services.items():
        fqdn = f"{service_name}.{ns}.svc.cluster.local"
        names = f"{fqdn} {service_name}.{ns}.svc {service_name}.{ns}"
        if ip is not None:
            entries.append((ip, ns, names))
            continue
        for pod in endpoints(ns, obj):
            entries.append((pod.ip, ns, names))
            if subdomain(pod) == service_name:
                entries.append((pod.ip, ns, f"{pod.name}.{fqdn} {pod.name}.{service_name}.{ns}"))
    return entries


def hosts_file(
    entries: list[tuple[str, str, str]], ns: str, own: tuple[str, str], external: Mapping[str, str]
) -> str:
    """A pod's hosts file: short names for its own namespace's Services, as DNS search does."""
    lines = ["127.0.0.1 localhost", f"{own[0]} {own[1]}"]
    for ip, entry_ns, names in entries:
        short = f" {names.split()[0].split('.')[0]}" if entry_ns == ns else ""
        lines.append(f"{ip} {names}{short}")
    lines += [f"{ip} {host}" for host, ip in external.items()]
    return "\n".join(lines) + "\n"
