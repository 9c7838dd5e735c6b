"""The crm's lookup cache on its own: expiry, invalidation, the stale-read guard, its bound."""

from __future__ import annotations

from datetime import UTC, datetime

from voicemesh.common.contracts.tools import ContactInfo
from voicemesh.crm.cache import LookupCache

NOW = datetime(2030, 1, 1, tzinfo=UTC)
ADA = (ContactInfo(contact_id="c1", name="Ada", created_at=NOW, updated_at=NOW),)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_the_ttl_and_tenants_stay_apart() -> None:
    clock = Clock()
    cache = LookupCache(2.0, clock=clock)
    cache.put("a", "k", ADA, cache.generation("a"))
    cache.put("a", "none", (), cache.generation("a"))
    assert cache.get("a", "k") == ADA
    assert cache.get("a", "none") == ()  # "nobody matches" is an answer too
    assert cache.get("b", "k") is None
    clock.now += 2.0
    assert cache.get("a", "k") is None


def test_invalidation_drops_a_tenant_and_a_read_that_raced_a_write() -> None:
    cache = LookupCache(60.0)
    cache.put("a", "k", ADA, cache.generation("a"))
    cache.put("b", "k", ADA, cache.generation("b"))
    before_read = cache.generation("a")
    cache.invalidate("a")  # a write committed while a lookup was reading
    assert cache.get("a", "k") is None
    assert cache.get("b", "k") == ADA
    cache.put("a", "k", ADA, before_read)  # what that lookup read may predate the write
    assert cache.get("a", "k") is None
    cache.put("a", "k", ADA, cache.generation("a"))
    assert cache.get("a", "k") == ADA


def test_size_is_bounded_and_a_zero_ttl_turns_it_off() -> None:
    cache = LookupCache(60.0, max_entries=3)
    for n in range(5):
        cache.put("a", n, ADA, cache.generation("a"))
    assert [n for n in range(5) if cache.get("a", n) is not None] == [2, 3, 4]
    off = LookupCache(0.0)
    off.put("a", "k", ADA, off.generation("a"))
    assert not off.enabled and off.get("a", "k") is None
