"""Tenants and verticals: who a call belongs to and which rules apply to it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from voicemesh.common.contracts.errors import UnknownTenant

__all__ = ["TENANT_ID_PATTERN", "Tenant", "TenantRegistry", "Vertical", "validate_tenant_id"]

#: Tenant ids become subject tokens, so they use the NATS-safe alphabet only. Match it with
#: ``fullmatch`` (``re``'s ``$`` also matches before a trailing newline; pydantic's does not).
TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TENANT_ID = re.compile(TENANT_ID_PATTERN)


class Vertical(StrEnum):
    """The business verticals an agent pod is built for."""

    REAL_ESTATE = "real_estate"
    HEALTHCARE = "healthcare"
    BEHAVIORAL_HEALTH = "behavioral_health"
    LEGAL = "legal"
    SALON = "salon"
    INSURANCE = "insurance"

    @property
    def handles_phi(self) -> bool:
        """Healthcare-class verticals keep protected health information out of logs and spans."""
        return self in {Vertical.HEALTHCARE, Vertical.BEHAVIORAL_HEALTH}


def validate_tenant_id(tenant: str) -> str:
    """Return ``tenant`` if it is a valid tenant id, else raise ``ValueError``."""
    if not _TENANT_ID.fullmatch(tenant):
        raise ValueError(
            f"invalid tenant id {tenant!r}: lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters"
        )
    return tenant


class Tenant(BaseModel):
    """One customer on one vertical."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=TENANT_ID_PATTERN)
    vertical: Vertical
    display_name: str = ""
    time_zone: str = "America/New_York"


class TenantRegistry:
    """The tenants a process knows about, looked up by id.

    A per-tenant pod knows exactly one tenant; the local stack serves one demo tenant per
    vertical. An unknown tenant is bad input, never a default.
    """

    def __init__(self, tenants: list[Tenant]) -> None:
        self._tenants = {t.id: t for t in tenants}

    @classmethod
    def parse(cls, spec: str) -> TenantRegistry:
        """Build a registry from ``"acme:healthcare,homes:real_estate"``."""
        tenants = []
        for item in filter(None, (part.strip() for part in spec.split(","))):
            tenant_id, sep, vertical = item.partition(":")
            if not sep:
                raise ValueError(f"tenant entry {item!r} must be 'tenant:vertical'")
            tenants.append(Tenant(id=validate_tenant_id(tenant_id), vertical=Vertical(vertical)))
        return cls(tenants)

    @classmethod
    def demo(cls) -> TenantRegistry:
        """One demo tenant per vertical, named ``demo-<vertical>`` (underscores become dashes)."""
        return cls(
            [
                Tenant(id=f"demo-{v.value.replace('_', '-')}", vertical=v, display_name=v.name)
                for v in Vertical
            ]
        )

    def get(self, tenant: str) -> Tenant | None:
        return self._tenants.get(tenant)

    def served(self, tenant: str) -> Tenant:
        """The tenant ``tenant``, or ``UnknownTenant`` (dead-letter) if it is not served here."""
        try:
            return self._tenants[tenant]
        except KeyError:
            raise UnknownTenant(f"tenant {tenant!r} is not served here") from None

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._tenants

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._tenants.values())

    def __len__(self) -> int:
        return len(self._tenants)

    def ids(self) -> list[str]:
        return sorted(self._tenants)
