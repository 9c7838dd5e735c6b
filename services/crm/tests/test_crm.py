"""The crm service on real NATS JetStream and SQLite: tools, event-fed history, read API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from voicemesh.common import (
    CallConnected,
    CallEnded,
    CallRequested,
    DeadLetter,
    EndReason,
    Envelope,
    MeshService,
)
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import (
    AppointmentChanged,
    SmsStatus,
    ToolErrorCode,
    ToolEvent,
    ToolResult,
)
from voicemesh.common.contracts.tools import LookupContactArgs, UpsertContactArgs
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.tools import ToolClient
from voicemesh.crm import CrmSettings, create_app
from voicemesh.crm.store import Crm as CrmStore
from voicemesh.testkit.fixtures import ProcessTracker, wait_until

API_KEY = "crm-test-key-0123456789abcd"
FILE_KEY = "crm-file-key-0123456789abcd"  # only in the keys file, for the insurance tenant
PHONE = "+15555550177"


@dataclass
class Crm:
    service: MeshService
    homes: str
    law: str
    cover: str
    tools: ToolClient
    http: httpx.AsyncClient
    js: JetStreamContext

    async def call(self, tenant: str, name: str, args: dict[str, Any], **kw: Any) -> ToolResult:
        return await self.tools.call(tenant, "crm", name, args, **kw)

    async def ok(self, tenant: str, name: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
        result = await self.call(tenant, name, args, **kw)
        assert result.ok and result.result is not None, result.error
        return result.result

    async def publish(self, event: Envelope, subject: str, msg_id: str | None = None) -> None:
        await self.js.publish(
            subject,
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": msg_id or event.event_id},
        )


@pytest.fixture
async def crm(
    nats: NatsClient, nats_url: str, sqlite_url: str, tmp_path: Path, unique: Callable[[str], str]
) -> AsyncIterator[Crm]:
    js = nats.jetstream()
    await streams.apply(js, services={"crm"})
    homes, law, cover = unique("homes"), unique("law"), unique("cover")
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"{cover}:{FILE_KEY}\n")
    settings = CrmSettings.model_validate(
        {
            "nats_urls": [nats_url],
            "database_url": sqlite_url,
            "tenants": f"{homes}:real_estate,{law}:legal,{cover}:insurance",
            "api_keys": f"{homes}:{API_KEY}",
            "api_keys_file": str(keys_file),
        }
    )
    service = create_app(settings)
    await service.start()
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service.http),
        base_url="http://crm",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    try:
        yield Crm(service, homes, law, cover, ToolClient(nats, source="test"), http, js)
    finally:
        await http.aclose()
        await service.stop()


async def test_contacts_notes_and_typed_errors(crm: Crm) -> None:
    t = crm.homes
    created = await crm.ok(t, "upsert_contact", {"name": "Ada Lovelace", "phone": PHONE})
    assert created["created"] is True
    contact_id = created["contact"]["contact_id"]
    updated = await crm.ok(t, "upsert_contact", {"phone": PHONE, "email": "Ada@Example.org"})
    assert updated["created"] is False and updated["contact"]["contact_id"] == contact_id
    assert updated["contact"]["email"] == "ada@example.org"

    for key in ({"phone": PHONE}, {"email": "ada@example.org"}, {"name": "lovelace"}):
        found = await crm.ok(t, "lookup_contact", key)
        assert [c["contact_id"] for c in found["contacts"]] == [contact_id], key

    missing = await crm.call(t, "lookup_contact", {"phone": "+15555550000"})
    assert missing.error is not None and missing.error.code is ToolErrorCode.NOT_FOUND
    empty = await crm.call(t, "lookup_contact", {})
    assert empty.error is not None and empty.error.code is ToolErrorCode.INVALID
    bad_phone = await crm.call(t, "lookup_contact", {"phone": "555-0100"})
    assert bad_phone.error is not None and bad_phone.error.code is ToolErrorCode.INVALID

    other = await crm.ok(t, "upsert_contact", {"name": "Alan", "phone": "+15555550178"})
    clash = await crm.call(
        t,
        "upsert_contact",
        {"contact_id": other["contact"]["contact_id"], "email": "ada@example.org"},
    )
    assert clash.error is not None and clash.error.code is ToolErrorCode.CONFLICT

    note = await crm.ok(t, "add_note", {"contact_id": contact_id, "text": "prefers mornings"})
    assert note["contact_id"] == contact_id
    history = await crm.ok(t, "list_interactions", {"contact_id": contact_id})
    assert [(i["kind"], i["summary"]) for i in history["interactions"]] == [
        ("note", "prefers mornings")
    ]
    nobody = await crm.call(t, "add_note", {"contact_id": "nope", "text": "x"})
    assert nobody.error is not None and nobody.error.code is ToolErrorCode.NOT_FOUND

    # Another tenant never sees this tenant's contacts.
    elsewhere = await crm.call(crm.law, "lookup_contact", {"phone": PHONE})
    assert elsewhere.error is not None and elsewhere.error.code is ToolErrorCode.NOT_FOUND


async def test_lookups_follow_this_process_writes_at_once(crm: Crm) -> None:
    """Lookups are cached, and every contact write of this process is seen by the next one."""
    t, phone = crm.homes, "+15555550190"
    unknown = await crm.call(t, "lookup_contact", {"phone": phone})
    assert unknown.error is not None and unknown.error.code is ToolErrorCode.NOT_FOUND
    await crm.ok(t, "upsert_contact", {"name": "Grace", "phone": phone})
    found = await crm.ok(t, "lookup_contact", {"phone": phone})
    assert [c["name"] for c in found["contacts"]] == ["Grace"]
    await crm.ok(t, "upsert_contact", {"phone": phone, "name": "Grace Hopper"})
    for key in ({"phone": phone}, {"name": "hopper"}):
        again = await crm.ok(t, "lookup_contact", key)
        assert [c["name"] for c in again["contacts"]] == ["Grace Hopper"], key

    # A write made by an event consumer (a caller the crm had not met) counts too.
    caller = "+15555550191"
    nobody = await crm.call(t, "lookup_contact", {"phone": caller})
    assert nobody.error is not None and nobody.error.code is ToolErrorCode.NOT_FOUND
    requested = CallRequested(tenant=t, call_id="call-9", source="test", user_id="u", phone=caller)
    await crm.publish(requested, subjects.call_lifecycle(t, "call-9"))

    async def known() -> bool:
        return (await crm.call(t, "lookup_contact", {"phone": caller})).ok

    await wait_until(known, timeout=10, what="the consumer's new contact in lookups")


async def test_on_a_call_upsert_writes_only_the_calls_own_contact(crm: Crm) -> None:
    """A call acts for one contact: its request's verified number, or the one it creates.
    Another contact cannot be reached through it, by id, phone or email; a backend can."""
    t = crm.homes
    maria = (await crm.ok(t, "upsert_contact", {"name": "Maria Lopez", "phone": PHONE}))["contact"]
    verified = "+15555550140"
    requested = CallRequested(
        tenant=t, call_id="call-v", source="test", user_id="u", phone=verified
    )
    await crm.publish(requested, subjects.call_lifecycle(t, "call-v"))

    async def bound() -> dict[str, Any] | None:
        caller = await crm.ok(t, "caller", {}, call_id="call-v")
        return caller if caller["verified_phone"] else None

    caller = await wait_until(bound, timeout=10, what="the call bound to its verified number")
    assert caller["verified_phone"] == verified and caller["contact_id"] != maria["contact_id"]

    async def on_call(call_id: str, **arguments: Any) -> ToolResult:
        return await crm.call(t, "upsert_contact", arguments, call_id=call_id)

    refused = [
        await on_call("call-v", contact_id=maria["contact_id"], phone="+15555550141"),
        await on_call("call-v", phone=PHONE, name="Not Maria"),  # Maria's number
        await on_call("call-v", phone="+15555550142"),  # its own number, changed
        await on_call("call-b", contact_id=maria["contact_id"], name="X"),
        await on_call("call-b", phone=PHONE, name="Not Maria"),
    ]
    codes = [r.error.code.value if r.error else None for r in refused]
    assert codes == ["forbidden"] * 5, codes
    # Its own contact: a name and an email may be added, its verified number stays.
    own = await on_call("call-v", name="Ada King", email="ada@example.org", phone=verified)
    assert own.ok and own.result is not None, own.error
    assert own.result["contact"]["contact_id"] == caller["contact_id"]
    assert own.result["contact"]["phone"] == verified
    # A call with no verified number creates its contact once, then writes only that one.
    first = await on_call("call-b", name="Ben", phone="+15555550143")
    again = await on_call("call-b", email="ben@example.org")
    assert first.ok and again.ok and first.result and again.result
    assert again.result["contact"]["contact_id"] == first.result["contact"]["contact_id"]
    assert (await crm.ok(t, "caller", {}, call_id="call-b"))["verified_phone"] is None
    unchanged = await crm.http.get(f"/v1/{t}/contacts/{maria['contact_id']}")
    assert unchanged.json() == maria
    # The tenant's backend (no call) still updates whichever contact it names.
    moved = await crm.ok(
        t, "upsert_contact", {"contact_id": maria["contact_id"], "phone": "+15555550144"}
    )
    assert moved["contact"]["phone"] == "+15555550144"
    no_call = await crm.call(t, "caller", {})
    assert no_call.error is not None and no_call.error.code is ToolErrorCode.INVALID


async def test_a_connected_call_with_a_vouched_phone_binds_its_caller(crm: Crm) -> None:
    """A call the tenant backend created at the gateway with a phone (its ``CallConnected``
    carries it) acts for that number, as a pushed call's ``CallRequested`` does."""
    t, verified = crm.homes, "+15555550150"
    maria = (await crm.ok(t, "upsert_contact", {"name": "Maria Lopez", "phone": PHONE}))["contact"]
    events: dict[str, Envelope] = {
        # No phone (the /demo page's call, a pushed call's own): nothing to bind.
        "call-demo": CallConnected(tenant=t, call_id="call-demo", source="test"),
        "call-in": CallConnected(tenant=t, call_id="call-in", source="test", phone=verified),
        "call-out": CallRequested(
            tenant=t, call_id="call-out", source="test", user_id="u", phone=verified
        ),
    }
    for call_id, event in events.items():
        await crm.publish(event, subjects.call_lifecycle(t, call_id))

    async def bound(call_id: str) -> dict[str, Any] | None:
        caller = await crm.ok(t, "caller", {}, call_id=call_id)
        return caller if caller["verified_phone"] else None

    inbound = await wait_until(lambda: bound("call-in"), timeout=10, what="call-in bound")
    outbound = await wait_until(lambda: bound("call-out"), timeout=10, what="call-out bound")
    assert inbound == outbound and inbound["verified_phone"] == verified
    assert inbound["contact_id"] != maria["contact_id"]
    # The consumer takes the stream in order: the phone-less event came and bound nothing.
    unbound = await crm.ok(t, "caller", {}, call_id="call-demo")
    assert unbound == {"contact_id": None, "verified_phone": None}
    # Bound as a pushed call is: another contact stays out of reach, and the call's history
    # lands on the verified contact.
    refused = await crm.call(
        t, "upsert_contact", {"phone": PHONE, "name": "Not Maria"}, call_id="call-in"
    )
    assert refused.error is not None and refused.error.code is ToolErrorCode.FORBIDDEN
    ended = CallEnded(tenant=t, call_id="call-in", source="test", reason=EndReason.HANGUP)
    await crm.publish(ended, subjects.call_lifecycle(t, "call-in"))

    async def history() -> list[Any]:
        found = await crm.ok(t, "list_interactions", {"contact_id": inbound["contact_id"]})
        return [i for i in found["interactions"] if i["kind"] == "call"]

    assert len(await wait_until(history, timeout=10, what="the call in the history")) == 1


async def test_another_replicas_write_shows_once_the_cache_entry_expires(
    sqlite_url: str, unique: Callable[[str], str]
) -> None:
    """Two crm stores on one database, as two replicas: the TTL bounds how stale one can be."""
    db = Database(sqlite_url)
    await db.create_all()
    tenant, phone = unique("t"), "+15555550192"
    mine, theirs = CrmStore(db, lookup_cache_ttl_s=0.5), CrmStore(db, lookup_cache_ttl_s=0.5)
    try:
        await theirs.upsert(tenant, UpsertContactArgs(name="Old Name", phone=phone))
        by_phone = LookupContactArgs(phone=phone)
        assert [c.name for c in await mine.lookup(tenant, by_phone)] == ["Old Name"]
        await theirs.upsert(tenant, UpsertContactArgs(name="New Name", phone=phone))
        # Within the TTL this replica still answers from its cache: the documented window.
        assert [c.name for c in await mine.lookup(tenant, by_phone)] == ["Old Name"]

        async def renamed() -> bool:
            return [c.name for c in await mine.lookup(tenant, by_phone)] == ["New Name"]

        await wait_until(renamed, timeout=5, what="the other replica's write after the TTL")
        # The replica that wrote sees its own write at once.
        assert [c.name for c in await theirs.lookup(tenant, by_phone)] == ["New Name"]
    finally:
        await db.close()


async def test_vertical_tools(crm: Crm) -> None:
    found = await crm.ok(
        crm.homes, "search_listings", {"city": "springfield", "max_price": 700000, "min_beds": 3}
    )
    assert [(x["address"], x["beds"]) for x in found["listings"]] == [
        ("12 Harbor View Rd", 3),
        ("5 Orchard Ln", 4),
    ]
    # The demo agent's script asks for three bedrooms in Riverside and reads policy 412551.
    riverside = await crm.ok(crm.homes, "search_listings", {"city": "Riverside", "min_beds": 3})
    assert riverside["listings"][0]["address"] == "17 Willow Bend"
    demo_policy = await crm.ok(crm.cover, "lookup_policy", {"policy_number": "412551"})
    assert demo_policy["status"] == "active"
    sold = await crm.ok(crm.homes, "search_listings", {"status": "sold"})
    assert [x["address"] for x in sold["listings"]] == ["9 Lakeside Dr"]

    conflict = await crm.ok(crm.law, "conflict_check", {"parties": ["globex  corporation", "Zed"]})
    assert conflict["clear"] is False
    assert [(m["party"], m["role"]) for m in conflict["matches"]] == [
        ("globex  corporation", "adverse")
    ]
    clear = await crm.ok(crm.law, "conflict_check", {"parties": ["Nobody Atall"]})
    assert clear == {"clear": True, "matches": []}

    policy = await crm.ok(crm.cover, "lookup_policy", {"phone": "+15555550101"})
    assert policy["policy_number"] == "POL-1002" and policy["kind"] == "home"
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    claim_args = {
        "policy_number": "POL-1001",
        "incident_date": yesterday,
        "description": "rear-ended at a light",
        "idempotency_key": "claim-1",
    }
    first = await crm.ok(crm.cover, "file_claim", claim_args)
    again = await crm.ok(crm.cover, "file_claim", claim_args)
    assert first["claim_id"] == again["claim_id"] and first["status"] == "filed"
    lapsed = await crm.call(crm.cover, "file_claim", {**claim_args, "policy_number": "POL-1003"})
    assert lapsed.error is not None and lapsed.error.code is ToolErrorCode.CONFLICT
    unknown = await crm.call(crm.cover, "lookup_policy", {"policy_number": "POL-9999"})
    assert unknown.error is not None and unknown.error.code is ToolErrorCode.NOT_FOUND

    # Tools are fenced to their vertical.
    for tenant, name, args in (
        (crm.homes, "lookup_policy", {"policy_number": "POL-1001"}),
        (crm.law, "search_listings", {}),
        (crm.cover, "conflict_check", {"parties": ["x"]}),
    ):
        refused = await crm.call(tenant, name, args)
        assert refused.error is not None and refused.error.code is ToolErrorCode.FORBIDDEN, name


async def test_history_is_fed_by_events_once_each(crm: Crm) -> None:
    t = crm.homes
    known = await crm.ok(t, "upsert_contact", {"name": "Grace", "phone": PHONE})
    contact_id = known["contact"]["contact_id"]

    requested = CallRequested(tenant=t, call_id="call-1", source="test", user_id="u", phone=PHONE)
    ended = CallEnded(
        tenant=t, call_id="call-1", source="test", reason=EndReason.HANGUP, duration_s=42
    )
    booked = AppointmentChanged(
        tenant=t,
        source="calendar",
        appointment_id="a1",
        change="booked",
        start=datetime(2030, 1, 2, 15, 0, tzinfo=UTC),
        phone=PHONE,
    )
    texted = SmsStatus(
        tenant=t, source="sms", idempotency_key="k", status="sent", to=PHONE, provider="outbox"
    )
    await crm.publish(requested, subjects.call_lifecycle(t, "call-1"))
    await crm.publish(ended, subjects.call_lifecycle(t, "call-1"))
    # Redelivered events (a new JetStream id, the same event id) must not repeat history.
    await crm.publish(ended, subjects.call_lifecycle(t, "call-1"), msg_id="again-1")
    await crm.publish(booked, subjects.event(t, "appointment"))
    await crm.publish(booked, subjects.event(t, "appointment"), msg_id="again-2")
    await crm.publish(texted, subjects.event(t, "sms"))

    async def history() -> list[tuple[str, str]]:
        result = await crm.ok(t, "list_interactions", {"contact_id": contact_id})
        return sorted((i["kind"], i["summary"]) for i in result["interactions"])

    expected = [
        ("appointment", "appointment booked for 2030-01-02 15:00 UTC"),
        ("call", "call ended (hangup, 42 s)"),
        ("sms", "text sent"),
    ]
    await wait_until(lambda: _equals(history(), expected), timeout=15, what="history")

    async def drained() -> bool:
        calls = await crm.js.consumer_info("CALLS", "crm-calls")
        events = await crm.js.consumer_info("EVENTS", "crm-events")
        return all(c.num_pending == 0 and c.num_ack_pending == 0 for c in (calls, events))

    await wait_until(drained, timeout=15, what="both consumers drained")
    assert await history() == expected

    # The read API shows the same history to a holder of the tenant's key.
    response = await crm.http.get(f"/v1/{t}/contacts/{contact_id}/interactions")
    assert response.status_code == 200
    assert len(response.json()["interactions"]) == 3


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_malformed_events_are_dead_lettered_and_the_consumers_go_on(crm: Crm) -> None:
    t = crm.homes
    dead = await crm.js.subscribe(subjects.dead_letter(t), stream="DLQ")
    await crm.js.publish(subjects.event(t, "sms"), b"not json at all")
    await crm.js.publish(subjects.event(t, "sms"), b'{"type": "sms.status", "tenant": 7}')
    await crm.js.publish(subjects.call_lifecycle(t, "c9"), b'{"type": "call.ended"}')
    reasons = []
    for _ in range(3):
        msg = await dead.next_msg(timeout=10)
        entry = DeadLetter.model_validate_json(msg.data)
        reasons.append((entry.consumer, entry.reason))
        await msg.ack()
    assert {c for c, _ in reasons} == {"crm-events", "crm-calls"}, reasons
    await dead.unsubscribe()

    # Events of kinds the crm does not keep are acked and ignored, not dead-lettered.
    tool_event = {"type": "push.outcome", "tenant": t, "source": "push"}
    await crm.js.publish(subjects.event(t, "push"), str(tool_event).replace("'", '"').encode())
    result = await crm.ok(t, "upsert_contact", {"phone": "+15555550199"})
    assert result["created"] is True

    async def drained() -> bool:
        info = await crm.js.consumer_info("EVENTS", "crm-events")
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await wait_until(drained, timeout=10, what="crm-events drained")


async def test_read_api_needs_the_tenant_key(crm: Crm) -> None:
    t = crm.homes
    await crm.ok(t, "upsert_contact", {"name": "Linus", "phone": PHONE})
    listed = await crm.http.get(f"/v1/{t}/contacts", params={"q": "linus"})
    assert listed.status_code == 200 and len(listed.json()["contacts"]) == 1
    listings = await crm.http.get(f"/v1/{t}/listings", params={"city": "Shelbyville"})
    assert {x["address"] for x in listings.json()["listings"]} == {
        "230 River St, Apt 4",
        "41 Elm Ct",
    }
    assert (await crm.http.get(f"/v1/{t}/contacts/nope")).status_code == 404
    assert (
        await crm.http.get(f"/v1/{t}/contacts", headers={"Authorization": ""})
    ).status_code == 401
    # The key opens only its own tenant.
    assert (await crm.http.get(f"/v1/{crm.law}/contacts")).status_code == 403


async def test_read_api_takes_a_key_that_is_only_in_the_keys_file(crm: Crm) -> None:
    from_file = {"Authorization": f"Bearer {FILE_KEY}"}
    listed = await crm.http.get(f"/v1/{crm.cover}/contacts", headers=from_file)
    assert listed.status_code == 200, listed.text
    # The file's key opens only its own tenant; the environment's keys still work beside it.
    assert (await crm.http.get(f"/v1/{crm.homes}/contacts", headers=from_file)).status_code == 403
    assert (await crm.http.get(f"/v1/{crm.cover}/contacts")).status_code == 403


async def test_the_service_process_answers_tools_and_records_them(
    nats: NatsClient,
    nats_url: str,
    sqlite_url: str,
    processes: ProcessTracker,
    unique: Callable[[str], str],
) -> None:
    js = nats.jetstream()
    await streams.apply(js, services={"crm"})
    tenant = unique("t")
    env = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_DATABASE_URL": sqlite_url,
        "VOICEMESH_TENANTS": f"{tenant}:real_estate",
    }
    proc = processes.python_module("voicemesh.crm", env)
    await proc.wait_healthy()
    recorded = await js.subscribe(subjects.event(tenant, "tool"), stream="EVENTS")
    tools = ToolClient(nats, source="test")
    found = await tools.call(tenant, "crm", "search_listings", {"city": "Riverside"}, call_id="c1")
    assert found.ok and found.result is not None and len(found.result["listings"]) == 4
    event = ToolEvent.model_validate_json((await recorded.next_msg(timeout=5)).data)
    assert (event.name, event.ok, event.call_id) == ("search_listings", True, "c1")
    await recorded.unsubscribe()
    assert proc.terminate() == 0, proc.log()[-2000:]


async def history_once_per_event(database_url: str, tenant: str) -> None:
    db = Database(database_url)
    await db.create_all()
    store = CrmStore(db, lookup_cache_ttl_s=5)
    try:
        contact_id = await store.contact_id_for_phone(tenant, PHONE)
        assert await store.contact_id_for_phone(tenant, PHONE) == contact_id
        when = datetime(2030, 1, 1, 9, tzinfo=UTC)
        args: dict[str, Any] = {"kind": "sms", "summary": "text sent", "occurred_at": when}
        assert await store.record(tenant, contact_id, source_event_id="e1", **args) is True
        assert await store.record(tenant, contact_id, source_event_id="e1", **args) is False
        assert await store.record(tenant, contact_id, source_event_id="e2", **args) is True
        history = await store.interactions(tenant, contact_id, 10)
        assert [i.summary for i in history.interactions] == ["text sent", "text sent"]
    finally:
        await db.close()


async def test_history_rows_are_written_once_per_event_on_sqlite(
    sqlite_url: str, unique: Callable[[str], str]
) -> None:
    await history_once_per_event(sqlite_url, unique("t"))


async def test_history_rows_are_written_once_per_event_on_postgresql(
    postgres_url: str, unique: Callable[[str], str]
) -> None:
    await history_once_per_event(postgres_url, unique("t"))
