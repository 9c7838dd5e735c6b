"""The rehearsal's network: a bridge, a network namespace and veth per pod, iptables.

* Pods get addresses in ``POD_CIDR`` on the bridge ``BRIDGE``; the host is the bridge's
  first address (the node, where hostNetwork pods and the kubelet's probes come from).
* Services get a ClusterIP in ``SERVICE_CIDR``; like kube-proxy's iptables mode, DNAT rules
  (chain ``VMRH-SERVICES``) spread new connections over the Service's ready endpoints.
* NetworkPolicies are filter rules in the chain ``VMRH-FORWARD``, jumped to from FORWARD
  for the bridge's traffic; ``br_netfilter`` makes bridged traffic traverse them.
* ``INTERNET_CIDR``: a network namespace playing the internet (the APNs and Twilio
  stand-ins), outside every private range, routed through the node.

Every chain, rule, namespace and link is named with the ``vmrh`` prefix, and ``Network.close``
removes them all and restores the sysctls it changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import TextIO

BRIDGE = "vmrh0"
POD_CIDR = ipaddress.IPv4Network("10.244.77.0/24")
SERVICE_CIDR = ipaddress.IPv4Network("10.96.77.0/24")
INTERNET_CIDR = ipaddress.IPv4Network("198.18.77.0/24")
NODE_IP = str(POD_CIDR.network_address + 1)
NETNS_PREFIX = "vmrh-"
CHAINS = {"filter": ("VMRH-FORWARD",), "nat": ("VMRH-SERVICES", "VMRH-POSTROUTING")}
# The jumps into the rehearsal's chains: (table, builtin chain, rule arguments).
JUMPS = (
    ("filter", "FORWARD", ["-i", BRIDGE, "-j", "VMRH-FORWARD"]),
    ("filter", "FORWARD", ["-o", BRIDGE, "-j", "VMRH-FORWARD"]),
    ("nat", "PREROUTING", ["-d", str(SERVICE_CIDR), "-j", "VMRH-SERVICES"]),
    ("nat", "OUTPUT", ["-d", str(SERVICE_CIDR), "-j", "VMRH-SERVICES"]),
    ("nat", "POSTROUTING", ["-j", "VMRH-POSTROUTING"]),
)
SYSCTLS = (
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
)
LOCK = "/run/voicemesh-rehearsal.lock"
#: What lives outside the namespaces (host-network processes, mount points made on this
#: machine): one JSON object per line, so that clean() finds them after a crash too.
STATE = Path("/run/voicemesh-rehearsal.state")
IP = "/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else "/sbin/ip"


def run(*argv: str, check: bool = True, input: str | None = None) -> str:
    result = subprocess.run(  # noqa: S603 - ip and iptables with arguments built here
        list(argv), capture_output=True, text=True, check=False, input=input
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


class Network:
    """The bridge, the pods' namespaces and the iptables state of one rehearsal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods = iter(POD_CIDR.hosts())
        next(self._pods)  # the node
        self._services = iter(SERVICE_CIDR.hosts())
        self._sysctls: dict[str, str] = {}
        self.namespaces: list[str] = []
        self.up = False
        self._lock_file: TextIO | None = None

    def start(self) -> None:
        # One rehearsal per machine at a time: the names and ranges are fixed.
        self._lock_file = open(LOCK, "w")
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        clean()  # what a rehearsal that was killed left behind
        if shutil.which("modprobe") and not Path(SYSCTLS[1]).exists():
            run("modprobe", "br_netfilter")
        for path in SYSCTLS:
            self._sysctls[path] = Path(path).read_text().strip()
            Path(path).write_text("1\n")
        run(IP, "link", "add", BRIDGE, "type", "bridge")
        run(IP, "addr", "add", f"{NODE_IP}/{POD_CIDR.prefixlen}", "dev", BRIDGE)
        run(IP, "link", "set", BRIDGE, "up")
        run(IP, "route", "add", str(SERVICE_CIDR), "dev", BRIDGE)
        for table, chains in CHAINS.items():
            for chain in chains:
                run("iptables", "-w", "-t", table, "-N", chain)
        for table, builtin, rule in JUMPS:
            run("iptables", "-w", "-t", table, "-I", builtin, "1", *rule)
        self.up = True

    def service_ip(self) -> str:
        with self._lock:
            return str(next(self._services))

    def pod_ip(self) -> str:
        with self._lock:
            return str(next(self._pods))

    def add_namespace(self, netns: str, ip: str, cidr: ipaddress.IPv4Network = POD_CIDR) -> None:
        """A network namespace with ``ip`` on a veth whose other end is on the bridge."""
        index = len(self.namespaces)
        self.namespaces.append(netns)
        host_end = f"vmrh{index}h"
        run(IP, "netns", "add", netns)
        run(IP, "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
        run(IP, "link", "set", host_end, "master", BRIDGE, "up")
        # As the kubelet's hairpin-veth mode: a pod reaches itself through its Service.
        run(IP, "link", "set", host_end, "type", "bridge_slave", "hairpin", "on")
        inside = (IP, "-n", netns)
        run(*inside, "link", "set", "lo", "up")
        run(*inside, "addr", "add", f"{ip}/{cidr.prefixlen}", "dev", "eth0")
        run(*inside, "link", "set", "eth0", "up")
        if cidr == POD_CIDR:
            run(*inside, "route", "add", "default", "via", NODE_IP)
        else:  # the internet: reached from the bridge through the node
            run(IP, "addr", "add", f"{cidr.network_address + 1}/{cidr.prefixlen}", "dev", BRIDGE)
            run(*inside, "route", "add", "default", "via", str(cidr.network_address + 1))

    def apply(self, rules: dict[str, dict[str, list[list[str]]]]) -> None:
        """Replace the rules of the rehearsal's chains (table -> chain -> rules), at once."""
        with self._lock:
            for table, chains in rules.items():
                lines = [f"*{table}"]
                lines += [f":{chain} - [0:0]" for chain in chains]
                for chain, chain_rules in chains.items():
                    lines += [f"-A {chain} {' '.join(r)}" for r in chain_rules]
                lines.append("COMMIT")
                run("iptables-restore", "-w", "--noflush", input="\n".join(lines) + "\n")

    def close(self) -> None:
        if self._lock_file is None:
            return
        clean()
        for path, value in self._sysctls.items():
            with contextlib.suppress(OSError):
                Path(path).write_text(value + "\n")
        self._lock_file.close()  # releases the lock
        self._lock_file = None
        self.up = False


def leftovers() -> list[str]:
    """What a rehearsal leaves on this machine: namespaces, links, chains (should be none)."""
    found = [n for n in _netns() if n.startswith(NETNS_PREFIX)]
    links = run(IP, "-o", "link", "show", check=False)
    found += [
        w.split("@")[0]
        for line in links.splitlines()
        for w in line.split()[1:2]
        if w.startswith("vmrh")
    ]
    for table in CHAINS:
        rules = run("iptables", "-w", "-t", table, "-S", check=False)
        found += [f"iptables {table}: {r}" for r in rules.splitlines() if "VMRH" in r]
    return found


def _netns() -> list[str]:
    return [
        line.split()[0]
        for line in run(IP, "netns", "list", check=False).splitlines()
        if line.strip()
    ]


def ok(*argv: str) -> bool:
    """Whether the command succeeds (its output is dropped)."""
    return subprocess.run(list(argv), capture_output=True, check=False).returncode == 0  # noqa: S603


def remember(**entry: object) -> None:
    """Note a process (``pid=``) or a directory made on this machine (``path=``)."""
    with STATE.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def _forget_state() -> None:
    if not STATE.exists():
        return
    entries = [json.loads(line) for line in STATE.read_text().splitlines() if line.strip()]
    for entry in entries:
        if "pid" in entry:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(entry["pid"]), signal.SIGKILL)
    paths = sorted((Path(e["path"]) for e in entries if "path" in e), key=lambda p: -len(p.parts))
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink() if path.is_file() and path.stat().st_size == 0 else path.rmdir()
    STATE.unlink()


def clean() -> None:
    """Remove everything of the rehearsal's network, whoever created it; idempotent."""
    _forget_state()
    for netns in _netns():
        if netns.startswith(NETNS_PREFIX):
            for pid in run(IP, "netns", "pids", netns, check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run(IP, "netns", "delete", netns, check=False)
    run(IP, "link", "delete", BRIDGE, check=False)
    for table, builtin, rule in JUMPS:
        while ok("iptables", "-w", "-t", table, "-D", builtin, *rule):
            pass
    for table in CHAINS:
        existing = run("iptables", "-w", "-t", table, "-S", check=False)
        for line in existing.splitlines():
            parts = line.split()
            if parts[:1] == ["-N"] and parts[1].startswith("VMRH"):
                run("iptables", "-w", "-t", table, "-F", parts[1], check=False)
        for line in existing.splitlines():
            parts = line.split()
            if parts[:1] == ["-N"] and parts[1].startswith("VMRH"):
                run("iptables", "-w", "-t", table, "-X", parts[1], check=False)
