"""NetworkPolicies as iptables filter rules, with the Kubernetes semantics.

A pod selected by a policy with ``Ingress`` (``Egress``) in its ``policyTypes`` is isolated
for ingress (egress): only traffic some policy allows passes, the rest is dropped. Replies
of allowed connections pass (conntrack). For each isolated pod there is a chain; a rule
that allows sets a mark bit, and traffic without the bit is dropped at the chain's end.
Pods on the host network are not subject to policies, as in Kubernetes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from deploy.rehearse.render import Obj, name, namespace

FORWARD = "VMRH-FORWARD"
EGRESS_OK = "0x10000/0x10000"
INGRESS_OK = "0x20000/0x20000"


@dataclass(frozen=True)
class PodAddress:
    """What the policies need to know of a pod."""

    name: str
    namespace: str
    ip: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    host_network: bool = False


def matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (``matchLabels`` and ``matchExpressions``); empty selects all."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


class Translator:
    """Policies, pods and namespace labels -> the rules of the filter table's chains."""

    def __init__(
        self, policies: list[Obj], pods: list[PodAddress], namespaces: dict[str, dict[str, str]]
    ) -> None:
        self.policies = policies
        self.pods = [p for p in pods if not p.host_network]
        self.namespaces = namespaces
        self.chains: dict[str, list[list[str]]] = {}

    def rules(self) -> dict[str, list[list[str]]]:
        forward: list[list[str]] = [
            ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
        ]
        self.chains = {FORWARD: forward}
        for index, pod in enumerate(self.pods):
            for direction, flag in (("Egress", "-s"), ("Ingress", "-d")):
                selecting = [p for p in self.policies if self._isolates(p, pod, direction)]
                if selecting:
                    chain = f"VMRH-{direction[0]}{index}"
                    self.chains[chain] = self._chain(pod, direction, selecting)
                    forward.append([flag, f"{pod.ip}/32", "-j", chain])
        forward.append(["-j", "ACCEPT"])
        return self.chains

    def _isolates(self, policy: Obj, pod: PodAddress, direction: str) -> bool:
        spec = policy.get("spec") or {}
        types = spec.get("policyTypes") or (
            ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
        )
        return (
            direction in types
            and namespace(policy) == pod.namespace
            and matches(spec.get("podSelector"), pod.labels)
        )

    def _chain(self, pod: PodAddress, direction: str, policies: list[Obj]) -> list[list[str]]:
        mark = EGRESS_OK if direction == "Egress" else INGRESS_OK
        peer_flag = "-d" if direction == "Egress" else "-s"
        rules: list[list[str]] = []
        for policy in policies:
            key = "egress" if direction == "Egress" else "ingress"
            for rule in (policy.get("spec") or {}).get(key) or []:
                peers = rule.get("to" if direction == "Egress" else "from")
                for target, ports in self._targets(
                    policy, peers, rule.get("ports"), pod, direction
                ):
                    for match in ports:
                        if target.startswith("except:"):
                            chain = self._except_chain(target, peer_flag, mark, match)
                            rules.append(["-j", chain])
                        else:
                            where = [peer_flag, target] if target else []
                            rules.append(
                                [*where, *match, "-j", "MARK", "--or-mark", mark.split("/")[0]]
                            )
        rules.append(["-m", "mark", "!", "--mark", mark, "-j", "DROP"])
        return rules

    def _except_chain(self, target: str, flag: str, mark: str, match: list[str]) -> str:
        """An ipBlock with exceptions: the excepted ranges return, the rest is marked."""
        cidr, *excepted = target.removeprefix("except:").split(",")
        chain = f"VMRH-X{len(self.chains)}"
        self.chains[chain] = [
            *([flag, e, "-j", "RETURN"] for e in excepted),
            [flag, cidr, *match, "-j", "MARK", "--or-mark", mark.split("/")[0]],
        ]
        return chain

    def _targets(
        self,
        policy: Obj,
        peers: list[Obj] | None,
        ports: list[Obj] | None,
        pod: PodAddress,
        direction: str,
    ) -> Iterable[tuple[str, list[list[str]]]]:
        """(peer address or ``except:cidr,ex...`` or "" for any, port matches) pairs."""
        if not peers:
            yield "", self._ports(ports, pod)
            return
        for peer in peers:
            block = peer.get("ipBlock")
            if block:
                excepted = block.get("except") or []
                target = (
                    "except:" + ",".join([block["cidr"], *excepted]) if excepted else block["cidr"]
                )
                yield target, self._ports(ports, pod)
                continue
            for other in self._peer_pods(policy, peer):
                named = other if direction == "Egress" else pod
                yield f"{other.ip}/32", self._ports(ports, named)

    def _peer_pods(self, policy: Obj, peer: Obj) -> list[PodAddress]:
        pod_selector = peer.get("podSelector")
        ns_selector = peer.get("namespaceSelector")
        found = []
        for other in self.pods:
            if ns_selector is not None:
                if not matches(ns_selector, self.namespaces.get(other.namespace, {})):
                    continue
            elif other.namespace != namespace(policy):
                continue
            if pod_selector is not None and not matches(pod_selector, other.labels):
                continue
            found.append(other)
        return found

    @staticmethod
    def _ports(ports: list[Obj] | None, pod: PodAddress) -> list[list[str]]:
        if not ports:
            return [[]]
        out = []
        for port in ports:
            protocol = str(port.get("protocol", "TCP")).lower()
            value = port.get("port")
            if value is None:
                out.append(["-p", protocol])
                continue
            number = value if isinstance(value, int) else pod.ports.get(str(value))
            if number is None:
                continue  # a named port the pod does not have: matches nothing
            end = port.get("endPort")
            out.append(["-p", protocol, "--dport", f"{number}:{end}" if end else str(number)])
        return out


def describe(policy: Obj) -> str:
    return f"{namespace(policy)}/{name(policy)}"
