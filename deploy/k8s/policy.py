"""Production rules for the rendered manifests, beyond what the Kubernetes schemas check.

``check(docs)`` returns every violation in one rendered overlay: containers without
probes, resources or the hardened security context, ``latest`` or untagged images,
Secret values written inline, grace periods shorter than the services' graceful shutdown,
voicemesh containers without OTLP or Prometheus annotations or whose liveness probe asks
a dependency (``/readyz``, ``/healthz``: NATS down must not restart pods) or that reach
NATS, Redis or PostgreSQL without verified TLS or run with the demo settings on, commands
or arguments that expand a Secret's value, namespaces without a default-deny
NetworkPolicy, tenant pods that connect as another NATS user, and tenant NATS users whose
permissions reach outside ``vm.<tenant>.>``. ``validate.py`` runs it on every overlay;
``tests/k8s`` shows it failing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from deploy.k8s import nats_auth

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.streams import CONSUMERS

Doc = dict[str, Any]

VOICEMESH_IMAGE = "ghcr.io/voicemesh/"
DEFAULT_GRACEFUL_TIMEOUT_S = 10.0
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
#: The probe paths of a voicemesh container (``runtime/service.py``): liveness and startup
#: ask only whether the process answers; readiness whether its NATS connection is up.
PROBE_PATHS = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
#: Paths that answer 503 when NATS (or another dependency) is down: readiness only.
DEPENDENCY_PROBE_PATHS = frozenset({"/readyz", "/healthz"})

_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY|CREDENTIAL|PRIVATE|_AUTH$|DATABASE_URL")
_REF_ONLY = re.compile(r"^(\$\([A-Za-z_][A-Za-z0-9_]*\))+$")
_URL_CREDENTIALS = re.compile(r"://[^/@\s:]*:(?P<password>[^@/\s]+)@")
_SECRET_ARG = re.compile(r"(secret|password|passwd|token)\s*[=:]\s*(?P<value>\S+)", re.I)
#: Kubernetes' ``$(VAR)`` expansion in env values, command and args (``$$`` escapes a ``$``).
_EXPANSION = re.compile(r"\$\$|\$\((?P<var>[A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(frozen=True)
class Violation:
    """One broken rule, e.g. ``Deployment/gateway container gateway: no livenessProbe``."""

    where: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: [{self.rule}] {self.detail}"


def _name(doc: Doc) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec of a workload, or ``None`` for any other object."""
    kind = doc.get("kind")
    if kind not in WORKLOADS:
        return None
    spec = doc.get("spec") or {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template") or {}
    result: Doc = template.get("spec") or {}
    return result


def _template_meta(doc: Doc) -> Doc:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    meta: Doc = (spec.get("template") or {}).get("metadata") or {}
    return meta


def _containers(pod: Doc) -> Iterator[Doc]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def _config_maps(docs: list[Doc]) -> dict[tuple[str | None, str], Mapping[str, str]]:
    return {
        ((d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name", "")): (
            d.get("data") or {}
        )
        for d in docs
        if d.get("kind") == "ConfigMap"
    }


def container_env(
    container: Doc,
    namespace: str | None,
    config_maps: Mapping[tuple[str | None, str], Mapping[str, str]],
) -> dict[str, str]:
    """Literal environment of a container: ``envFrom`` ConfigMaps, then ``env`` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref:
            env.update(config_maps.get((namespace, ref.get("name", "")), {}))
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def _image_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (that means latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses the latest tag"
    return None


def _check_container(
    where: str, kind: str, container: Doc, pod: Doc, env: dict[str, str]
) -> Iterator[Violation]:
    image = str(container.get("image", ""))
    problem = _image_problem(image)
    if problem:
        yield Violation(where, "image-tag", problem)

    resources = container.get("resources") or {}
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(bound) or {}):
                yield Violation(where, "resources", f"no {bound}.{resource}")

    sc = container.get("securityContext") or {}
    pod_sc = pod.get("securityContext") or {}
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        yield Violation(where, "security-context", "runAsNonRoot is not true")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        yield Violation(where, "security-context", "runAsUser is 0")
    if sc.get("readOnlyRootFilesystem") is not True:
        yield Violation(where, "security-context", "readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        yield Violation(where, "security-context", "allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        yield Violation(where, "security-context", "privileged container")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        yield Violation(where, "security-context", "capabilities.drop lacks ALL")
    if caps.get("add"):
        yield Violation(where, "security-context", f"capabilities.add {caps['add']}")

    if kind in LONG_RUNNING:
        yield from _check_probes(where, container, ours=image.startswith(VOICEMESH_IMAGE))

    tenant = env.get("VOICEMESH_TENANT", "*")
    if tenant != "*" and env.get("VOICEMESH_NATS_USER") != tenant:
        user = env.get("VOICEMESH_NATS_USER")
        yield Violation(where, "nats-user", f"tenant {tenant} connects as NATS user {user!r}")

    if image.startswith(VOICEMESH_IMAGE):
        otlp = env.get("VOICEMESH_OTLP_ENDPOINT", "")
        if not re.match(r"^http://jaeger(\.[a-z0-9.-]+)?:4318/?$", otlp):
            yield Violation(where, "otlp", f"VOICEMESH_OTLP_ENDPOINT is {otlp!r}, not Jaeger")
        yield from _check_tls(where, container, env)
        yield from _check_demo_off(where, image, env)

    yield from _check_inline_secrets(where, container)
    yield from _check_secret_argv(where, container, env)


def _probe_path(spec: Doc) -> str:
    return str((spec.get("httpGet") or {}).get("path") or "").split("?")[0]


def _check_probes(where: str, container: Doc, *, ours: bool) -> Iterator[Violation]:
    """Both probes exist; a voicemesh container's follow ``PROBE_PATHS``, and none of its
    liveness or startup probes asks a dependency (a NATS outage would restart every pod)."""
    for probe in ("livenessProbe", "readinessProbe"):
        if not container.get(probe):
            yield Violation(where, "probes", f"no {probe}")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        spec = container.get(probe)
        if not spec or not ours:
            continue
        path = _probe_path(spec)
        if probe != "readinessProbe" and path in DEPENDENCY_PROBE_PATHS:
            yield Violation(
                where, "liveness-dependency", f"{probe} {path} fails when a dependency is down"
            )
        elif path != PROBE_PATHS[probe]:
            yield Violation(where, "probes", f"{probe} is not an HTTP GET of {PROBE_PATHS[probe]}")


def _check_tls(where: str, container: Doc, env: dict[str, str]) -> Iterator[Violation]:
    """NATS, Redis and PostgreSQL over TLS, each server verified against the mesh's CA."""
    urls = env.get("VOICEMESH_NATS_URLS") or env.get("VOICEMESH_NATS_URL", "")
    if any(not u.strip().startswith("tls://") for u in urls.split(",")):
        yield Violation(where, "tls", f"NATS URL {urls!r} is not tls://")
    if not env.get("VOICEMESH_NATS_TLS_CA_FILE"):
        yield Violation(where, "tls", "no VOICEMESH_NATS_TLS_CA_FILE: the server is not verified")
    redis = env.get("VOICEMESH_REDIS_URL")
    if redis is not None and not (
        redis.startswith("rediss://") and "ssl_ca_certs=" in redis.partition("?")[2]
    ):
        yield Violation(where, "tls", "VOICEMESH_REDIS_URL is not rediss:// with ssl_ca_certs")
    database = any(e.get("name") == "VOICEMESH_DATABASE_URL" for e in container.get("env") or [])
    if database and not env.get("PGSSLROOTCERT"):
        yield Violation(where, "tls", "a database URL but no PGSSLROOTCERT to verify it with")


#: Per service, the settings that are on for ``make run`` (their default) and must be off in
#: the manifests: the gateway's unauthenticated demo calls, the crm's demo records.
DEMO_SETTINGS = {"gateway": ("VOICEMESH_DEMO_ENABLED",), "crm": ("VOICEMESH_SEED_DEMO_DATA",)}


def _check_demo_off(where: str, image: str, env: dict[str, str]) -> Iterator[Violation]:
    service = re.split(r"[:@]", image.removeprefix(VOICEMESH_IMAGE), maxsplit=1)[0]
    for name in DEMO_SETTINGS.get(service, ()):
        if env.get(name, "true").strip().lower() not in ("false", "0", "no", "off"):
            yield Violation(where, "demo", f"{name} is not false (unauthenticated demo data)")
    # The gateway's default CORS origin "*" (for /demo from any page) is for make run only.
    origins = env.get("VOICEMESH_CORS_ORIGINS")
    if service == "gateway" and (origins is None or "*" in origins):
        yield Violation(where, "demo", "VOICEMESH_CORS_ORIGINS is unset or allows every origin")


def _secret_named(name: str) -> bool:
    """``VOICEMESH_NATS_PASSWORD`` yes; ``VOICEMESH_APNS_CREDENTIALS_DIR`` (a path) no."""
    upper = name.upper()
    return bool(_SECRET_NAME.search(upper)) and not upper.endswith(("_DIR", "_FILE", "_PATH"))


def _check_inline_secrets(where: str, container: Doc) -> Iterator[Violation]:
    for item in container.get("env") or []:
        name, value = item.get("name", ""), item.get("value")
        if value is None:
            continue
        value = str(value)
        if _secret_named(name) and value and not _REF_ONLY.match(value):
            yield Violation(where, "inline-secret", f"env {name} has an inline value")
        match = _URL_CREDENTIALS.search(value)
        if match and not _REF_ONLY.match(match["password"]):
            yield Violation(where, "inline-secret", f"env {name} embeds a password in a URL")
    for arg in [*(container.get("command") or []), *(container.get("args") or [])]:
        match = _SECRET_ARG.search(str(arg))
        if match and "$(" not in match["value"]:
            yield Violation(where, "inline-secret", f"argument {arg!r} carries a secret")


def _expanded(text: str) -> set[str]:
    """The variables ``text`` expands with ``$(VAR)``."""
    return {m["var"] for m in _EXPANSION.finditer(text) if m["var"]}


def _check_secret_argv(where: str, container: Doc, env: dict[str, str]) -> Iterator[Violation]:
    """No command or argument expands a Secret's value: every process's command line is
    visible on its node (``ps``; for coturn on the host network, to anyone on the node).
    A Secret reaches a process as a mounted file (or in its environment).

    Secret-sourced: an env var from a ``secretKeyRef``, one whose value expands such a var
    (a URL with a password), and any var a ``secretRef`` in ``envFrom`` may define.
    """
    secret: set[str] = set()
    defined = set(env)
    for item in container.get("env") or []:
        name = str(item.get("name", ""))
        from_secret = "secretKeyRef" in (item.get("valueFrom") or {})
        if from_secret or _expanded(str(item.get("value", ""))) & secret:
            secret.add(name)
        else:
            secret.discard(name)
        defined.add(name)
    secret_refs = [
        str(source["secretRef"].get("name"))
        for source in container.get("envFrom") or []
        if "secretRef" in source
    ]
    for field in ("command", "args"):
        for index, arg in enumerate(container.get(field) or []):
            for var in sorted(_expanded(str(arg))):
                if var in secret:
                    origin = "a Secret's value"
                elif var not in defined and secret_refs:
                    origin = f"from Secret {', '.join(secret_refs)} (envFrom)"
                else:
                    continue
                yield Violation(
                    where,
                    "secret-argv",
                    f"{field}[{index}] expands $({var}), {origin}: mount the Secret as a file",
                )


def _grace_needed(pod: Doc, envs: list[dict[str, str]]) -> float:
    graceful = max(
        (float(e.get("VOICEMESH_GRACEFUL_TIMEOUT", DEFAULT_GRACEFUL_TIMEOUT_S)) for e in envs),
        default=DEFAULT_GRACEFUL_TIMEOUT_S,
    )
    pre_stop = max(
        (
            float(
                (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get(
                    "seconds", 0
                )
            )
            for c in pod.get("containers") or []
        ),
        default=0.0,
    )
    return graceful + pre_stop


def check_workload(
    doc: Doc, config_maps: Mapping[tuple[str | None, str], Mapping[str, str]]
) -> Iterator[Violation]:
    pod = pod_spec(doc)
    if pod is None:
        return
    kind = str(doc["kind"])
    namespace = (doc.get("metadata") or {}).get("namespace")
    envs: list[dict[str, str]] = []
    ours = False
    for container in _containers(pod):
        env = container_env(container, namespace, config_maps)
        envs.append(env)
        ours = ours or str(container.get("image", "")).startswith(VOICEMESH_IMAGE)
        where = f"{_name(doc)} container {container.get('name')}"
        yield from _check_container(where, kind, container, pod, env)
    if kind in LONG_RUNNING and ours:
        grace = pod.get("terminationGracePeriodSeconds", 30)
        needed = _grace_needed(pod, envs)
        if not grace > needed:
            yield Violation(
                _name(doc),
                "grace-period",
                f"terminationGracePeriodSeconds {grace} is not longer than the graceful "
                f"shutdown ({needed:g} s)",
            )
        annotations = _template_meta(doc).get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true" or not annotations.get(
            "prometheus.io/port"
        ):
            yield Violation(_name(doc), "prometheus", "pod template lacks scrape annotations")


def check_secrets(doc: Doc) -> Iterator[Violation]:
    if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
        yield Violation(_name(doc), "inline-secret", "Secret with values in the manifests")
    if doc.get("kind") == "ConfigMap":
        for key, value in (doc.get("data") or {}).items():
            if _secret_named(key):
                yield Violation(_name(doc), "inline-secret", f"ConfigMap key {key} looks secret")
            match = _URL_CREDENTIALS.search(str(value))
            if match and not _REF_ONLY.match(match["password"]):
                yield Violation(_name(doc), "inline-secret", f"{key} embeds a password in a URL")


def tenant_subject_allowed(tenant: str, subject: str) -> bool:
    """Whether ``subject`` in a tenant user's allow list stays inside that tenant.

    Allowed: ``vm.<tenant>.>`` and subjects under it, ``_INBOX_<tenant>.>``, and the
    JetStream API / ack subjects of the tenant's own durable consumers (create only with a
    filter inside ``vm.<tenant>.``).
    """
    own = subjects.all_tenant_subjects(tenant)
    prefix = own[:-1]  # "vm.<tenant>."
    if subject == own or (subject.startswith(prefix) and len(subject) > len(prefix)):
        return True
    if subject == f"{subjects.inbox_prefix(tenant)}.>":
        return True
    for spec in CONSUMERS:
        durable = spec.durable(tenant)
        exact = {
            f"$JS.API.CONSUMER.INFO.{spec.stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{durable}",
            f"$JS.ACK.{spec.stream}.{durable}.>",
        }
        if subject in exact:
            return True
        create = f"$JS.API.CONSUMER.CREATE.{spec.stream}.{durable}.{prefix}"
        if subject.startswith(create) and len(subject) > len(create):
            return True
    return False


def check_nats_permissions(doc: Doc) -> Iterator[Violation]:
    if doc.get("kind") != "ConfigMap" or "auth.conf" not in (doc.get("data") or {}):
        return
    where = f"{_name(doc)} auth.conf"
    try:
        users = nats_auth.parse(doc["data"]["auth.conf"])
    except (ValueError, KeyError) as exc:
        yield Violation(where, "nats-permissions", f"unreadable: {exc}")
        return
    if not users:
        yield Violation(where, "nats-permissions", "no users: NATS would accept anyone")
    for user in users:
        if user.tenant is None:
            continue
        for direction, allowed in (("publish", user.publish), ("subscribe", user.subscribe)):
            for subject in allowed:
                if not tenant_subject_allowed(user.tenant, subject):
                    yield Violation(
                        where,
                        "nats-permissions",
                        f"tenant {user.tenant} may {direction} {subject!r}, outside "
                        f"{subjects.all_tenant_subjects(user.tenant)}",
                    )


def check_network_policies(docs: list[Doc]) -> Iterator[Violation]:
    """Every namespace that runs workloads has a default-deny NetworkPolicy."""
    denied = {
        (d.get("metadata") or {}).get("namespace")
        for d in docs
        if d.get("kind") == "NetworkPolicy"
        and (d.get("spec") or {}).get("podSelector") == {}
        and set((d.get("spec") or {}).get("policyTypes") or []) == {"Ingress", "Egress"}
        and not (d.get("spec") or {}).get("ingress")
        and not (d.get("spec") or {}).get("egress")
    }
    for doc in docs:
        ns = (doc.get("metadata") or {}).get("namespace")
        if pod_spec(doc) is not None and ns not in denied:
            yield Violation(_name(doc), "network-policy", f"namespace {ns} has no default deny")


def check(docs: list[Doc]) -> list[Violation]:
    """Every violation in the objects of one rendered overlay."""
    config_maps = _config_maps(docs)
    found: list[Violation] = []
    for doc in docs:
        found += check_workload(doc, config_maps)
        found += check_secrets(doc)
        found += check_nats_permissions(doc)
    found += check_network_policies(docs)
    return found
