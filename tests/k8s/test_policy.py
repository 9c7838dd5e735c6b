"""The rendered manifests pass Kubernetes 1.32 strict validation and the production policy,
and the policy catches each kind of breakage (probes, resources, security context, tags,
inline secrets, grace period, OTLP, scrape annotations, default deny, NATS permissions)."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from voicemesh.common.contracts import subjects

from .conftest import K8S, ROOT, Docs

Doc = dict[str, Any]
VERTICALS = ["real_estate", "healthcare", "behavioral_health", "legal", "salon", "insurance"]
POD_CONTAINERS = ["agent", "crm", "calendar", "sms", "audit", "transcript"]


def find(docs: Docs, kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def find_prefix(docs: Docs, kind: str, prefix: str) -> Doc:
    """A generated ConfigMap is named ``<name>-<hash>``."""
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    assert len(matches) == 1, f"{kind}/{prefix}*: {len(matches)} found"
    return matches[0]


def container(doc: Doc, name: str) -> Doc:
    found: Doc = next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)
    return found


def rules(k8s: ModuleType, docs: Docs) -> set[str]:
    return {v.rule for v in k8s.policy.check(docs)}


# --- the real manifests ------------------------------------------------------------------------


def test_every_overlay_is_rendered(rendered: dict[str, Docs]) -> None:
    assert set(rendered) == {"base", "tenants/acme", *(f"verticals/{v}" for v in VERTICALS)}


@pytest.mark.parametrize(
    "overlay", ["base", "tenants/acme", *(f"verticals/{v}" for v in VERTICALS)]
)
def test_overlay_is_valid_and_passes_policy(
    k8s: ModuleType, rendered: dict[str, Docs], overlay: str
) -> None:
    docs = rendered[overlay]
    assert k8s.schema_errors(docs) == []
    assert [str(v) for v in k8s.policy.check(docs)] == []
    assert k8s.nats_config_errors(docs) == []


def test_validate_script_passes_on_the_repository() -> None:
    """What `make k8s-validate` runs."""
    result = subprocess.run(
        [sys.executable, str(K8S / "validate.py")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok   ") == 8


def test_validate_script_fails_on_a_broken_overlay() -> None:
    broken = ROOT / "tests" / "k8s" / "fixtures" / "broken"
    result = subprocess.run(
        [sys.executable, str(K8S / "validate.py"), str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    out = result.stdout
    assert "'replica' was unexpected" in out  # strict schema validation
    for rule in [
        "probes",
        "resources",
        "security-context",
        "image-tag",
        "inline-secret",
        "grace-period",
        "prometheus",
        "network-policy",
        "nats-permissions",
    ]:
        assert f"[{rule}]" in out, f"{rule} not reported:\n{out}"
    assert "env VOICEMESH_NATS_PASSWORD has an inline value" in out
    assert "Secret with values in the manifests" in out
    assert "tenant acme may publish 'vm.>'" in out
    assert "tenant acme may subscribe '_INBOX.>'" in out


def test_each_vertical_is_one_six_container_agent_pod(rendered: dict[str, Docs]) -> None:
    for vertical in VERTICALS:
        docs = rendered[f"verticals/{vertical}"]
        tenant = f"demo-{vertical.replace('_', '-')}"
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        assert len(deployments) == 1
        pod = deployments[0]["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == POD_CONTAINERS
        ports = [c["ports"][0]["containerPort"] for c in pod["containers"]]
        assert ports == list(range(8082, 8088))
        namespace = find(docs, "Namespace", f"vm-{tenant}")
        assert namespace["metadata"]["labels"]["voicemesh.io/tenant"] == tenant
        assert all(d["metadata"].get("namespace") == f"vm-{tenant}" for d in docs[1:])
        identity = find_prefix(docs, "ConfigMap", "tenant-")["data"]
        assert identity["VOICEMESH_TENANT"] == identity["VOICEMESH_NATS_USER"] == tenant
        assert find_prefix(docs, "ConfigMap", "profile-")["data"]["VOICEMESH_VERTICAL"] == vertical
        for c in pod["containers"]:
            refs = {
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in c["env"]
                if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
            }
            assert {"nats-credentials", "redis", "api-keys"} <= refs
            assert ("database" in refs) == (c["name"] != "agent")


def test_tenant_pod_reaches_only_nats_redis_postgres_jaeger_and_dns(
    rendered: dict[str, Docs],
) -> None:
    docs = rendered["verticals/legal"]
    egress = find(docs, "NetworkPolicy", "agent-pod")["spec"]["egress"]
    reached = {
        (peer.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name")
        or (peer.get("podSelector") or {}).get("matchLabels", {}).get("k8s-app")
        for rule in egress
        for peer in rule["to"]
    }
    assert reached == {"kube-dns", "nats", "redis", "postgres", "jaeger"}
    assert not any("ipBlock" in peer for rule in egress for peer in rule["to"])
    # The sample tenant opts in to provider HTTPS (OpenAI, SMS), public addresses only.
    provider = find(rendered["tenants/acme"], "NetworkPolicy", "provider-egress")
    block = provider["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert "10.0.0.0/8" in block["except"]


def test_sample_tenant_renames_the_vertical_demo_tenant(rendered: dict[str, Docs]) -> None:
    docs = rendered["tenants/acme"]
    text = repr(docs)
    assert "demo-healthcare" not in text
    assert find(docs, "Namespace", "vm-acme")["metadata"]["labels"]["voicemesh.io/tenant"] == "acme"
    identity = find_prefix(docs, "ConfigMap", "tenant-")["data"]
    assert identity == {
        "VOICEMESH_TENANT": "acme",
        "VOICEMESH_TENANTS": "acme:healthcare",
        "VOICEMESH_NATS_USER": "acme",
        "VOICEMESH_SEED_DEMO_DATA": "false",
    }
    assert find_prefix(docs, "ConfigMap", "profile-")["data"]["VOICEMESH_VERTICAL"] == "healthcare"


def test_base_has_the_shared_infrastructure(rendered: dict[str, Docs]) -> None:
    docs = rendered["base"]
    nats = find(docs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    conf = find_prefix(docs, "ConfigMap", "nats-config-")["data"]["nats.conf"]
    assert conf.count("nats-headless.voicemesh.svc.cluster.local:6222") == 3
    assert "jetstream" in conf and "include ./auth.conf" in conf
    assert find(docs, "PodDisruptionBudget", "nats")["spec"]["maxUnavailable"] == 1
    assert find(docs, "PodDisruptionBudget", "gateway")["spec"]["minAvailable"] == 1
    for name in ("gateway", "push"):
        hpa = find(docs, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        assert hpa["spec"]["minReplicas"] >= 2
    for kind, name in [
        ("Deployment", "redis"),
        ("StatefulSet", "postgres"),
        ("Deployment", "jaeger"),
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("Ingress", "gateway"),
        ("Deployment", "push"),
        ("DaemonSet", "coturn"),
        ("Job", "streams-apply"),
    ]:
        find(docs, kind, name)
    ports = {p["port"] for p in find(docs, "Service", "jaeger")["spec"]["ports"]}
    assert {4317, 4318, 16686} <= ports
    # The edge services serve every tenant the overlays deploy.
    tenants = find_prefix(docs, "ConfigMap", "tenants-")["data"]["VOICEMESH_TENANTS"]
    assert "acme:healthcare" in tenants.split(",")
    assert len(tenants.split(",")) == 7


def test_nats_permission_file_is_generated_from_the_overlays(k8s: ModuleType) -> None:
    assert k8s.nats_auth.main(["--check"]) == 0
    tenants = k8s.nats_auth.deployed_tenants()
    assert tenants["acme"] == "healthcare"
    assert tenants["demo-real-estate"] == "real_estate"
    users = {u.name: u for u in k8s.nats_auth.parse((K8S / "base/nats/auth.conf").read_text())}
    assert set(users) == {"admin", "gateway", "push", *tenants}


def test_images_are_pinned_to_one_release(rendered: dict[str, Docs], k8s: ModuleType) -> None:
    images = {
        c["image"]
        for docs in rendered.values()
        for d in docs
        if (pod := k8s.policy.pod_spec(d)) is not None
        for c in pod["containers"]
        if c["image"].startswith("ghcr.io/voicemesh/")
    }
    assert images == {
        f"ghcr.io/voicemesh/{s}:0.1.0" for s in ["gateway", "push", "cli", *POD_CONTAINERS]
    }


# --- the policy fails on broken copies of the real manifests ------------------------------------

Mutation = Callable[[Docs], object]


def _pod(docs: Docs) -> Doc:
    return find(docs, "Deployment", "agent-pod")


def _crm(docs: Docs) -> Doc:
    return container(_pod(docs), "crm")


def _env(docs: Docs, name: str) -> Doc:
    found: Doc = next(e for e in _crm(docs)["env"] if e["name"] == name)
    return found


def _probe_on(probe: str, path: str) -> Mutation:
    """Point the crm container's ``probe`` at ``path``."""
    return lambda d: _crm(d)[probe]["httpGet"].update(path=path)


def _set_env(name: str, value: str) -> Mutation:
    """Give the crm container ``name=value``, over what its ConfigMaps say."""
    return lambda d: _crm(d)["env"].append({"name": name, "value": value})


def _drop_default_deny(docs: Docs) -> None:
    docs[:] = [
        d
        for d in docs
        if not (d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "default-deny")
    ]


VERTICAL_BREAKAGES: dict[str, tuple[Mutation, str]] = {
    "no liveness probe": (lambda d: _crm(d).pop("livenessProbe"), "probes"),
    "no readiness probe": (lambda d: _crm(d).pop("readinessProbe"), "probes"),
    "probe not on /livez": (_probe_on("livenessProbe", "/metrics"), "probes"),
    "readiness not on /readyz": (_probe_on("readinessProbe", "/livez"), "probes"),
    "liveness asks NATS": (_probe_on("livenessProbe", "/readyz"), "liveness-dependency"),
    "liveness on the old /healthz": (_probe_on("livenessProbe", "/healthz"), "liveness-dependency"),
    "startup asks NATS": (_probe_on("startupProbe", "/readyz"), "liveness-dependency"),
    "no limits": (lambda d: _crm(d)["resources"].pop("limits"), "resources"),
    "no memory request": (lambda d: _crm(d)["resources"]["requests"].pop("memory"), "resources"),
    "no security context": (lambda d: _crm(d).pop("securityContext"), "security-context"),
    "writable root": (
        lambda d: _crm(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "security-context",
    ),
    "privilege escalation": (
        lambda d: _crm(d)["securityContext"].update(allowPrivilegeEscalation=True),
        "security-context",
    ),
    "capabilities kept": (
        lambda d: _crm(d)["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
        "security-context",
    ),
    "runs as root": (
        lambda d: _pod(d)["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0),
        "security-context",
    ),
    "latest tag": (lambda d: _crm(d).update(image="ghcr.io/voicemesh/crm:latest"), "image-tag"),
    "no tag": (lambda d: _crm(d).update(image="ghcr.io/voicemesh/crm"), "image-tag"),
    "inline NATS password": (
        lambda d: (
            _env(d, "VOICEMESH_NATS_PASSWORD").pop("valueFrom"),
            _env(d, "VOICEMESH_NATS_PASSWORD").update(value="s3cr3t-pass"),
        ),
        "inline-secret",
    ),
    "password inside a URL": (
        lambda d: _env(d, "VOICEMESH_REDIS_URL").update(value="redis://:hunter2@redis:6379/0"),
        "inline-secret",
    ),
    "Secret object with data": (
        lambda d: d.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "x"},
                "stringData": {"password": "p"},
            }
        ),
        "inline-secret",
    ),
    "short grace period": (
        lambda d: _pod(d)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=10),
        "grace-period",
    ),
    "no scrape annotations": (
        lambda d: _pod(d)["spec"]["template"]["metadata"].pop("annotations"),
        "prometheus",
    ),
    "OTLP elsewhere": (
        _set_env("VOICEMESH_OTLP_ENDPOINT", "http://collector.example.com:4318"),
        "otlp",
    ),
    "no default deny": (_drop_default_deny, "network-policy"),
    "NATS in clear text": (_set_env("VOICEMESH_NATS_URL", "nats://nats.voicemesh:4222"), "tls"),
    "NATS server not verified": (_set_env("VOICEMESH_NATS_TLS_CA_FILE", ""), "tls"),
    "Redis in clear text": (
        lambda d: _env(d, "VOICEMESH_REDIS_URL").update(
            value="redis://$(REDIS_USER):$(REDIS_PASSWORD)@redis.voicemesh:6379/2"
        ),
        "tls",
    ),
    "PostgreSQL not verified": (_set_env("PGSSLROOTCERT", ""), "tls"),
    "demo records seeded": (_set_env("VOICEMESH_SEED_DEMO_DATA", "true"), "demo"),
    "another tenant's NATS user": (_set_env("VOICEMESH_NATS_USER", "demo-legal"), "nats-user"),
    "a Secret expanded in the arguments": (
        lambda d: _crm(d).setdefault("args", []).append("--password=$(VOICEMESH_NATS_PASSWORD)"),
        "secret-argv",
    ),
    "a URL with a password expanded in the command": (
        lambda d: _crm(d).update(command=["sh", "-c", "exec crm --redis $(VOICEMESH_REDIS_URL)"]),
        "secret-argv",
    ),
    "a variable of an envFrom Secret expanded": (
        lambda d: (
            _crm(d).setdefault("envFrom", []).append({"secretRef": {"name": "provider-keys"}}),
            _crm(d).setdefault("args", []).append("--key=$(OPENAI_KEY)"),
        ),
        "secret-argv",
    ),
}


@pytest.fixture
def passing(k8s: ModuleType, rendered: dict[str, Docs]) -> Callable[[str], Docs]:
    """``passing(overlay)``: a copy of the overlay's rendering, which the policy passes, to
    break."""

    def copy_of(overlay: str) -> Docs:
        docs = copy.deepcopy(rendered[overlay])
        assert rules(k8s, docs) == set()
        return docs

    return copy_of


@pytest.mark.parametrize(
    ("mutate", "rule"), list(VERTICAL_BREAKAGES.values()), ids=list(VERTICAL_BREAKAGES)
)
def test_policy_fails_on_a_broken_vertical(
    k8s: ModuleType, passing: Callable[[str], Docs], mutate: Mutation, rule: str
) -> None:
    docs = passing("verticals/healthcare")
    mutate(docs)
    assert rule in rules(k8s, docs)


def _auth(docs: Docs) -> Doc:
    return find_prefix(docs, "ConfigMap", "nats-config-")


NATS_BREAKAGES: dict[str, tuple[str, str]] = {
    # (text in acme's user line, replacement)
    "every tenant's subjects": ('"vm.acme.>"', '"vm.>"'),
    "another tenant's subjects": ('"vm.acme.>"', '"vm.demo-legal.>"'),
    "all inboxes": ('"_INBOX_acme.>"', '"_INBOX.>"'),
    "the whole JetStream API": (
        '"$JS.API.CONSUMER.INFO.CALLS.agent-calls-acme"',
        '"$JS.API.>"',
    ),
    "another tenant's consumer": (
        '"$JS.API.CONSUMER.MSG.NEXT.CALLS.agent-calls-acme"',
        '"$JS.API.CONSUMER.MSG.NEXT.CALLS.agent-calls-demo-legal"',
    ),
    "a consumer filtered on another tenant": (
        '"$JS.API.CONSUMER.CREATE.CALLS.agent-calls-acme.vm.acme.>"',
        '"$JS.API.CONSUMER.CREATE.CALLS.agent-calls-acme.vm.demo-legal.>"',
    ),
    "a consumer with any filter": (
        '"$JS.API.CONSUMER.CREATE.CALLS.agent-calls-acme.vm.acme.>"',
        '"$JS.API.CONSUMER.CREATE.CALLS.agent-calls-acme"',
    ),
    "a password in the file": ("$VM_NATS_PASSWORD_ACME", '"hunter2"'),
}


@pytest.mark.parametrize("breakage", list(NATS_BREAKAGES))
def test_policy_fails_when_tenant_nats_permissions_leak(
    k8s: ModuleType, passing: Callable[[str], Docs], breakage: str
) -> None:
    docs = passing("base")
    old, new = NATS_BREAKAGES[breakage]
    data = _auth(docs)["data"]
    lines = data["auth.conf"].splitlines()
    (index,) = [i for i, line in enumerate(lines) if '"user": "acme"' in line]
    assert old in lines[index]
    lines[index] = lines[index].replace(old, new, 1)
    data["auth.conf"] = "\n".join(lines)
    violations = [v for v in k8s.policy.check(docs) if v.rule == "nats-permissions"]
    assert violations, breakage
    assert all("acme" in v.detail or "password" in v.detail for v in violations)


def test_nats_server_rejects_a_broken_nats_config(
    k8s: ModuleType, rendered: dict[str, Docs]
) -> None:
    """validate.py runs `nats-server -t` on the rendered NATS ConfigMap."""
    docs = copy.deepcopy(rendered["base"])
    data = _auth(docs)["data"]
    data["nats.conf"] = data["nats.conf"].replace("jetstream {", "jetstream {{")
    (error,) = k8s.nats_config_errors(docs)
    assert "nats-server rejects nats.conf" in error
    docs = copy.deepcopy(rendered["base"])
    data = _auth(docs)["data"]
    # A password variable the NATS pods do not have: the server would not start.
    data["auth.conf"] = data["auth.conf"].replace("$VM_NATS_PASSWORD_ACME", "$NOT_IN_THE_SECRET")
    (error,) = k8s.nats_config_errors(docs)
    assert "NOT_IN_THE_SECRET" in error


def test_a_tenant_suffix_does_not_grant_another_tenants_consumers(k8s: ModuleType) -> None:
    """Tenant ``b`` must not reach ``agent-calls-a-b``, tenant ``a-b``'s durable."""
    allowed = k8s.policy.tenant_subject_allowed
    assert allowed("a-b", "$JS.API.CONSUMER.INFO.CALLS.agent-calls-a-b")
    assert not allowed("b", "$JS.API.CONSUMER.INFO.CALLS.agent-calls-a-b")
    assert not allowed("b", "$JS.ACK.CALLS.agent-calls-a-b.>")
    assert not allowed("acme", subjects.all_tenant_subjects("acmex"))
    assert not allowed("acme", f"{subjects.ROOT}.acme")


@pytest.mark.parametrize("origins", ["*", "https://app.example.com,*", None])
def test_policy_fails_when_the_gateway_allows_every_origin(
    k8s: ModuleType, passing: Callable[[str], Docs], origins: str | None
) -> None:
    """CORS "*" lets any web page drive the API from a visitor's browser: make run only."""
    docs = passing("base")
    data = find_prefix(docs, "ConfigMap", "edge-config-")["data"]
    if origins is None:
        data.pop("VOICEMESH_CORS_ORIGINS")
    else:
        data["VOICEMESH_CORS_ORIGINS"] = origins
    assert "demo" in rules(k8s, docs)


def _coturn(docs: Docs) -> Doc:
    return container(find(docs, "DaemonSet", "coturn"), "coturn")


def test_policy_fails_when_the_turn_secret_is_on_coturns_command_line(
    k8s: ModuleType, passing: Callable[[str], Docs]
) -> None:
    """coturn runs on the host network: its command line is visible to anyone on the node."""
    docs = passing("base")
    coturn = _coturn(docs)
    coturn.pop("command")
    coturn["args"] = ["-c", "/etc/coturn/turnserver.conf", "--static-auth-secret=$(TURN_SECRET)"]
    secret = {"secretKeyRef": {"name": "turn", "key": "static-auth-secret"}}
    coturn["env"] = [{"name": "TURN_SECRET", "valueFrom": secret}]
    violations = [v for v in k8s.policy.check(docs) if v.rule == "secret-argv"]
    assert [(v.where, v.detail.split(",")[0]) for v in violations] == [
        ("DaemonSet/voicemesh/coturn container coturn", "args[2] expands $(TURN_SECRET)")
    ]


def test_arguments_may_expand_what_is_not_secret(
    k8s: ModuleType, passing: Callable[[str], Docs]
) -> None:
    """ConfigMap and downward API values, a Secret's name overridden by a literal value, and
    the escaped ``$$(VAR)`` (a literal ``$(VAR)``) are no Secret on the command line."""
    docs = passing("verticals/healthcare")
    crm = _crm(docs)
    crm["env"] += [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "VOICEMESH_NATS_PASSWORD", "value": "$(NOT_DEFINED)"},
    ]
    crm["args"] = [
        "--tenant=$(VOICEMESH_TENANT)",
        "--pod=$(POD_NAME)",
        "--nats=$(VOICEMESH_NATS_PASSWORD)",
        "--literal=$$(VOICEMESH_REDIS_URL)",
    ]
    assert "secret-argv" not in rules(k8s, docs)


def test_coturn_reads_the_turn_secret_from_a_file_only(
    rendered: dict[str, Docs], tmp_path: Path
) -> None:
    """The shipped container writes turnserver.conf plus the secret to a memory-backed file
    only its user may read, then runs turnserver on that file: no secret in its argv or env."""
    docs = rendered["base"]
    daemonset = find(docs, "DaemonSet", "coturn")
    coturn = _coturn(docs)
    assert "env" not in coturn and "envFrom" not in coturn and "args" not in coturn
    mounts = {m["mountPath"]: m["name"] for m in coturn["volumeMounts"]}
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/etc/coturn-secret"]]["secret"]["secretName"] == "turn"
    assert volumes[mounts["/run/coturn"]]["emptyDir"]["medium"] == "Memory"
    shell, flag, script = coturn["command"]
    *prepare, start = script.strip().splitlines()
    assert start == "exec turnserver -c /run/coturn/turnserver.conf"

    # The preparing lines, run by a real shell on local copies of the container's mounts.
    local = {p: tmp_path / p.strip("/").replace("/", "-") for p in mounts}
    prepared = "\n".join(prepare)
    for mount_path in sorted(local, key=len, reverse=True):  # /etc/coturn-secret first
        prepared = prepared.replace(f"{mount_path}/", f"{local[mount_path]}/")
        local[mount_path].mkdir()
    conf = find_prefix(docs, "ConfigMap", "coturn-config-")["data"]["turnserver.conf"]
    (local["/etc/coturn"] / "turnserver.conf").write_text(conf)
    secret_file = local["/etc/coturn-secret"] / "static-auth-secret"
    written = local["/run/coturn"] / "turnserver.conf"

    secret_file.write_text("a1b2\\c3%s")  # a backslash and a format directive survive
    result = subprocess.run([shell, flag, prepared], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert written.stat().st_mode & 0o777 == 0o600
    assert written.read_text() == f"{conf}\nstatic-auth-secret=a1b2\\c3%s\n"

    secret_file.write_text("")  # an empty Secret: turnserver is not started without one
    result = subprocess.run([shell, flag, prepared], capture_output=True, text=True, check=False)
    assert result.returncode != 0
