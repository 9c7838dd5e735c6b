"""Segments on a real database (SQLite and PostgreSQL): dedup, finals, order, search."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from voicemesh.common.contracts.events import Speaker, TranscriptSegment
from voicemesh.common.runtime.db import Database
from voicemesh.testkit.events import transcript_segment
from voicemesh.transcript.store import SearchQuery, TranscriptStore


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[TranscriptStore]:
    async with Database(database_url) as db:
        yield TranscriptStore(db)


def seg(
    n: int,
    text: str,
    start: float,
    *,
    speaker: Speaker = Speaker.CALLER,
    final: bool = True,
    tenant: str = "acme",
    call: str = "c1",
) -> TranscriptSegment:
    return transcript_segment(
        tenant, call, speaker, n, text, start_s=start, end_s=start + 1.5, final=final
    )


async def test_segments_come_back_in_speaking_order_once_each(store: TranscriptStore) -> None:
    later = seg(2, "I'd like Tuesday.", 4.0)
    agent = seg(1, "Hello, how can I help?", 0.5, speaker=Speaker.AGENT)
    first = seg(1, "Hi, I need an appointment.", 2.0)
    assert await store.add(later)
    assert await store.add(agent)
    assert await store.add(first)
    assert not await store.add(first)  # redelivery
    rows = await store.call_segments("acme", "c1")
    assert [r.text for r in rows] == [agent.text, first.text, later.text]


async def test_a_final_replaces_a_partial_and_never_the_reverse(store: TranscriptStore) -> None:
    assert await store.add(seg(1, "I need an app", 1.0, final=False))
    assert await store.call_segments("acme", "c1") == []
    assert [r.text for r in await store.call_segments("acme", "c1", include_partial=True)] == [
        "I need an app"
    ]
    assert await store.add(seg(1, "I need an appointment.", 1.0))
    assert not await store.add(seg(1, "I need an app", 1.0, final=False))  # stale partial
    rows = await store.call_segments("acme", "c1")
    assert [(r.text, r.final) for r in rows] == [("I need an appointment.", True)]


async def test_search_is_case_insensitive_literal_and_per_tenant(store: TranscriptStore) -> None:
    await store.add(seg(1, "The roof needs 100% replacement", 0.0))
    await store.add(seg(2, "About 1000 dollars", 2.0))
    await store.add(seg(3, "Roof leak in the attic", 4.0, call="c2"))
    await store.add(seg(1, "my roof too", 0.0, tenant="other"))

    hits = await store.search(SearchQuery("acme", "ROOF"))
    assert sorted((h.call_id, h.text) for h in hits) == [
        ("c1", "The roof needs 100% replacement"),
        ("c2", "Roof leak in the attic"),
    ]
    assert [h.text for h in await store.search(SearchQuery("acme", "100%"))] == [
        "The roof needs 100% replacement"
    ]
    assert await store.search(SearchQuery("acme", "1_0")) == []
    only_c2 = await store.search(SearchQuery("acme", "roof", call_id="c2"))
    assert [h.call_id for h in only_c2] == ["c2"]
    page = await store.search(SearchQuery("acme", "roof", limit=1))
    rest = await store.search(SearchQuery("acme", "roof", after_id=page[0].id or 0))
    assert len(page) == 1 and len(rest) == 1 and page[0].id != rest[0].id
    calls = await store.calls("acme")
    assert sorted((c.call_id, c.segments) for c in calls) == [("c1", 2), ("c2", 1)]
