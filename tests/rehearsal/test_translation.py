"""How the rehearsal reads manifests: $(VAR) expansion, image entrypoints, NetworkPolicies.

No root needed: these check the translation itself, against the rendered rehearsal
overlay where it matters.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.rehearse import render  # noqa: E402 - after the path above
from deploy.rehearse.images import Image  # noqa: E402
from deploy.rehearse.kubelet import expand  # noqa: E402
from deploy.rehearse.netpol import PodAddress, Translator, matches  # noqa: E402


def test_variable_references_expand_as_kubernetes_does() -> None:
    env = {"POD_IP": "10.0.0.7", "PW": "s3cret"}
    assert expand("http://$(POD_IP):8080", env) == "http://10.0.0.7:8080"
    assert expand("redis://:$(PW)@redis:6379/0", env) == "redis://:s3cret@redis:6379/0"
    assert expand("$$(POD_IP) $(UNKNOWN)", env) == "$(POD_IP) $(UNKNOWN)"


def test_command_replaces_the_entrypoint_and_args_the_cmd() -> None:
    image = Image(["/bin/sh", "-c", "exec python -m x"], ["streams", "apply"])
    assert image.argv(None, None) == ["/bin/sh", "-c", "exec python -m x", "streams", "apply"]
    assert image.argv(None, ["streams", "apply", "--replicas", "3"])[-1] == "3"
    assert image.argv(["nats-server"], None) == ["nats-server"]


def test_label_selectors() -> None:
    labels = {"app.kubernetes.io/name": "nats", "voicemesh.io/tenant": "acme"}
    assert matches({}, labels)
    assert matches({"matchLabels": {"app.kubernetes.io/name": "nats"}}, labels)
    assert not matches({"matchLabels": {"app.kubernetes.io/name": "redis"}}, labels)
    exists = {"matchExpressions": [{"key": "voicemesh.io/tenant", "operator": "Exists"}]}
    assert matches(exists, labels)
    assert not matches(exists, {"app.kubernetes.io/name": "nats"})
    not_in = {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}
    assert matches(not_in, {"a": "y"}) and not matches(not_in, {"a": "x"})


def test_the_shipped_policies_isolate_every_pod_of_the_shared_namespace() -> None:
    """Default deny in ``voicemesh``: each pod there gets an ingress and an egress chain
    ending in DROP, and a tenant pod may reach NATS's client port only."""
    manifests = render.load()
    everything = manifests.everything()
    policies = [o for o in everything if render.kind(o) == "NetworkPolicy"]
    namespaces = {
        render.name(o): render.labels(o) for o in everything if render.kind(o) == "Namespace"
    }
    nats = PodAddress("nats-0", "voicemesh", "10.1.0.2", {"app.kubernetes.io/name": "nats"})
    tenant = manifests.tenants[0]
    agent = PodAddress(
        "agent", tenant.namespace, "10.1.0.3", {"app.kubernetes.io/name": "agent-pod"}
    )
    chains = Translator(policies, [nats, agent], namespaces).rules()
    assert chains["VMRH-I0"][-1][-1] == "DROP" and chains["VMRH-E0"][-1][-1] == "DROP"
    allowed_to_nats = [r for r in chains["VMRH-I0"] if "10.1.0.3/32" in r]
    assert allowed_to_nats, chains["VMRH-I0"]
    assert all(r[r.index("--dport") + 1] == "4222" for r in allowed_to_nats)
