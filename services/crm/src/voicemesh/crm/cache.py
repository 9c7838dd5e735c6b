"""A per-tenant, in-process cache of contact lookups: the agent asks for the caller often.

Correctness rules:

* every contact write made by this process (``Crm.upsert``, ``Crm.ensure_contact``) calls
  ``invalidate(tenant)`` once it has committed (or failed), which drops that tenant's
  entries at once;
* a lookup that read the database while a write was invalidating must not store what it
  read (it may predate the write): ``put`` takes the tenant's generation from before the
  read and stores nothing if it moved;
* writes made by *another* crm replica are not seen here until an entry expires, after
  ``ttl_s`` seconds. A tenant's agent pod runs one crm, so in the shipped deployment every
  contact write goes through this process and the TTL only bounds staleness when someone
  scales the crm out. A TTL was chosen over an invalidation event on NATS because it needs
  no new subject or consumer and is correct with any number of replicas, at the cost of a
  short window (``VOICEMESH_LOOKUP_CACHE_TTL_S``, 0 turns the cache off).

"Nobody matches" is cached too (callers the crm has not met are common), under the same rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from voicemesh.common.contracts.tools import ContactInfo

__all__ = ["LookupCache"]

Found = tuple[ContactInfo, ...]


@dataclass
class _TenantEntries:
    generation: int = 0
    entries: dict[Hashable, tuple[float, Found]] = field(default_factory=dict)


class LookupCache:
    """Contact lookups by key, per tenant, expiring after ``ttl_s``; bounded in size."""

    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._tenants: dict[str, _TenantEntries] = {}

    @property
    def enabled(self) -> bool:
        return self._ttl_s > 0

    def _tenant(self, tenant: str) -> _TenantEntries:
        entries = self._tenants.get(tenant)
        if entries is None:
            entries = self._tenants[tenant] = _TenantEntries()
        return entries

    def generation(self, tenant: str) -> int:
        """Take this before reading the database; hand it to ``put`` afterwards."""
        return self._tenant(tenant).generation

    def get(self, tenant: str, key: Hashable) -> Found | None:
        """The cached contacts for ``key`` (possibly none found), or ``None`` on a miss."""
        if not self.enabled:
            return None
        entries = self._tenants.get(tenant)
        if entries is None:
            return None
        hit = entries.entries.get(key)
        if hit is None:
            return None
        expires_at, found = hit
        if self._clock() >= expires_at:
            del entries.entries[key]
            return None
        return found

    def put(self, tenant: str, key: Hashable, found: Found, generation: int) -> None:
        if not self.enabled:
            return
        entries = self._tenant(tenant)
        if entries.generation != generation:
            return  # a write landed while this was read: what was read may be stale
        if len(entries.entries) >= self._max_entries:
            # Oldest first (dicts keep insertion order): a cheap bound, not an exact LRU.
            entries.entries.pop(next(iter(entries.entries)))
        entries.entries[key] = (self._clock() + self._ttl_s, found)

    def invalidate(self, tenant: str) -> None:
        """Forget every lookup of ``tenant``; call after writing its contacts (in a ``finally``)."""
        entries = self._tenant(tenant)
        entries.generation += 1
        entries.entries.clear()
