"""The manifests of a rehearsal: ``kubectl kustomize`` of the rehearsal overlay, as rendered.

``deploy/k8s/overlays/rehearsal/base`` is the shared namespace; every other directory there
is one tenant. Objects are used exactly as ``kubectl kustomize`` prints them; the rehearsal
only adds what an API server adds (the ``kubernetes.io/metadata.name`` namespace label).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.k8s import validate

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "rehearsal"
SHARED = "voicemesh"


@dataclass(frozen=True)
class Tenant:
    """One tenant overlay, rendered."""

    name: str
    vertical: str
    namespace: str
    objects: list[Obj]


@dataclass(frozen=True)
class Manifests:
    base: list[Obj]
    tenants: list[Tenant]

    def everything(self) -> list[Obj]:
        return [*self.base, *(o for t in self.tenants for o in t.objects)]


def kind(obj: Obj) -> str:
    return str(obj.get("kind", ""))


def name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def namespace(obj: Obj) -> str:
    return str(obj["metadata"].get("namespace", ""))


def labels(obj: Obj) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def render(directory: Path) -> list[Obj]:
    """``kubectl kustomize directory``; namespaces get the label the API server adds."""
    objects = validate.render(directory)
    for obj in objects:
        if kind(obj) == "Namespace":
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name(obj)
    return objects


def tenant_of(objects: list[Obj]) -> tuple[str, str, str]:
    """(tenant, vertical, namespace) from the tenant overlay's ``tenant`` ConfigMap."""
    for obj in objects:
        data = obj.get("data") or {}
        if kind(obj) == "ConfigMap" and "VOICEMESH_TENANT" in data:
            tenant = str(data["VOICEMESH_TENANT"])
            _, _, vertical = str(data.get("VOICEMESH_TENANTS", "")).partition(":")
            return tenant, vertical, namespace(obj)
    raise ValueError("a tenant overlay without a ConfigMap holding VOICEMESH_TENANT")


def load(overlay: Path = OVERLAY) -> Manifests:
    base = render(overlay / "base")
    tenants = []
    for directory in sorted(p.parent for p in overlay.glob("*/kustomization.yaml")):
        if directory.name == "base":
            continue
        objects = render(directory)
        tenant, vertical, ns = tenant_of(objects)
        tenants.append(Tenant(tenant, vertical, ns, objects))
    return Manifests(base, tenants)
