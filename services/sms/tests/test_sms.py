"""The sms service on real NATS JetStream, Redis and SQLite, and against a local Twilio peer."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicemesh.common import DeadLetter, SmsJob
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import ToolRequest, ToolResult
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.contracts.tools import CallerArgs, CallerResult
from voicemesh.common.runtime.tools import ToolClient
from voicemesh.sms.sender import SmsSender
from voicemesh.testkit.fakes import ToolDesk

from .conftest import API_KEY, PHONE, TWILIO, FakeTwilio, StartSms, twilio_signature


async def test_a_job_published_twice_sends_one_message(start_sms: StartSms) -> None:
    sms = await start_sms()
    await sms.publish("once")
    await sms.publish("once")  # a new event id: only the database's key can catch it
    await sms.publish("other")
    sent = await sms.status_of("once", "sent")
    assert sent.provider == "outbox" and sent.provider_id and sent.to == PHONE
    await sms.status_of("other", "sent")
    await sms.settled()
    rows = await sms.messages()
    assert sorted(r["idempotency_key"] for r in rows) == ["once", "other"]
    assert all(r["status"] == "sent" for r in rows)


async def test_stop_opts_out_and_start_opts_back_in(start_sms: StartSms) -> None:
    sms = await start_sms()
    stop = await sms.http.post(f"/v1/{sms.tenant}/inbound", json={"from": PHONE, "body": " Stop "})
    assert stop.json() == {"result": "opted_out"}
    assert (await sms.http.get(f"/v1/{sms.tenant}/opt-outs")).json() == [PHONE]

    await sms.publish("while-out")
    await sms.status_of("while-out", "opted_out")
    row = next(r for r in await sms.messages() if r["idempotency_key"] == "while-out")
    assert row["provider_id"] is None  # the provider was never asked

    tools = ToolClient(sms.nats, source="test")
    refused = await tools.call(
        sms.tenant, "sms", "send", {"to": PHONE, "body": "hi", "idempotency_key": "tool-out"}
    )
    assert refused.ok and refused.result == {"idempotency_key": "tool-out", "queued": False}

    start = await sms.http.post(f"/v1/{sms.tenant}/inbound", json={"from": PHONE, "body": "START"})
    assert start.json() == {"result": "opted_in"}
    await sms.publish("back-in")
    await sms.status_of("back-in", "sent")


async def test_send_tool_enqueues_once_per_key(start_sms: StartSms) -> None:
    sms = await start_sms()
    tools = ToolClient(sms.nats, source="test")
    # A tenant backend's text (no call): its own recipient and words.
    args = {"to": PHONE, "body": "your table is ready", "idempotency_key": "tool-1"}
    for _ in range(3):
        result = await tools.call(sms.tenant, "sms", "send", args)
        assert result.ok and result.result == {"idempotency_key": "tool-1", "queued": True}
    sent = await sms.status_of("tool-1", "sent")
    assert sent.to == PHONE and sent.call_id is None
    await sms.settled()
    assert [r["idempotency_key"] for r in await sms.messages()] == ["tool-1"]
    bad = await tools.call(
        sms.tenant, "sms", "send", {"to": "555", "body": "x", "idempotency_key": "k"}
    )
    assert bad.error is not None and bad.error.code.value == "invalid"


async def test_on_a_call_the_send_tool_texts_the_calls_verified_number_a_template(
    start_sms: StartSms,
) -> None:
    """The agent's request names neither recipient nor words: the call's verified number
    (crm's answer to ``crm.caller``, here a ``ToolDesk``) gets the tenant's template."""
    sms = await start_sms()
    verified = {"call-verified": PHONE}
    crm = ToolDesk(sms.nats, sms.tenant)

    @crm.on("crm.caller")
    async def caller(request: ToolRequest, args: CallerArgs) -> CallerResult:
        phone = verified.get(request.call_id or "")
        return CallerResult(contact_id="c1" if phone else None, verified_phone=phone)

    await crm.start()
    tools = ToolClient(sms.nats, source="agent")

    async def send(call_id: str, key: str, **arguments: Any) -> ToolResult:
        return await tools.call(
            sms.tenant, "sms", "send", arguments, call_id=call_id, idempotency_key=key
        )

    try:
        start = "2026-11-24T15:30:00-05:00"
        booked = await send(
            "call-verified", "ok", template="appointment_booked", start=start, staff="Maria"
        )
        assert booked.ok and booked.result == {"idempotency_key": "ok", "queued": True}
        # Another number, or words of the model's own, are refused whatever else is given.
        other = await send("call-verified", "to", to="+15555550999", template="callback")
        free = await send("call-verified", "body", body="your account is locked, call us")
        # A call its request gave no number for has nobody to text.
        unverified = await send("call-browser", "none", template="callback")
        # A template is filled with typed fields only.
        link = await send(
            "call-verified", "x", template="appointment_booked", start=start, staff="see evil.com"
        )
    finally:
        await crm.stop()
    codes = [r.error.code.value if r.error else None for r in (other, free, unverified, link)]
    assert codes == ["forbidden", "forbidden", "forbidden", "invalid"], codes
    sent = await sms.status_of("ok", "sent")
    assert sent.to == PHONE and sent.call_id == "call-verified"
    await sms.settled()
    [row] = await sms.messages()
    assert row["body"] == (
        "Your appointment with Maria is booked for Tuesday, November 24 at 3:30 PM. "
        "Reply STOP to opt out."
    )
    assert [r.arguments for r in crm.calls("crm.caller")] == [{}, {}]  # the call asks


async def test_rate_limit_delays_but_never_drops(start_sms: StartSms) -> None:
    sms = await start_sms(rate_limit=2, rate_window_s=2)
    for i in range(4):
        await sms.publish(f"r{i}")
    for i in range(4):
        await sms.status_of(f"r{i}", "sent", timeout=20)
    stored = await sms.service.get(SmsSender).messages(sms.tenant, limit=10)
    sent_at = sorted(r.sent_at for r in stored if r.sent_at is not None)
    assert len(sent_at) == 4
    assert (sent_at[2] - sent_at[0]).total_seconds() >= 1.5, sent_at


async def test_malformed_job_is_dead_lettered_and_the_consumer_goes_on(
    start_sms: StartSms, unique: Callable[[str], str]
) -> None:
    sms = await start_sms()
    dead = await sms.js.subscribe(subjects.dead_letter(sms.tenant), stream="DLQ")
    await sms.js.publish(subjects.sms_outbound(sms.tenant), b'{"type": "sms.job", "to": 5}')
    stranger = unique("s")
    await sms.js.publish(
        subjects.sms_outbound(sms.tenant),
        SmsJob(tenant=stranger, source="t", idempotency_key="x", to=PHONE, body="b")
        .model_dump_json()
        .encode(),
    )
    reasons = []
    for _ in range(2):
        msg = await dead.next_msg(timeout=10)
        reasons.append(DeadLetter.model_validate_json(msg.data).reason)
        await msg.ack()
    assert any("to" in r for r in reasons) and any("tenant" in r for r in reasons), reasons
    await sms.publish("after")
    await sms.status_of("after", "sent")
    await dead.unsubscribe()


# --- Twilio ------------------------------------------------------------------------------------


async def test_twilio_form_fields_429_and_5xx_then_delivery_report(
    start_sms: StartSms, twilio: FakeTwilio
) -> None:
    twilio.script = [(429, {"code": 20429, "message": "Too Many Requests"}), (503, {})]
    sms = await start_sms(**TWILIO, twilio_base_url=twilio.url)
    await sms.publish("tw-1")
    sent = await sms.status_of("tw-1", "sent", timeout=20)
    assert len(twilio.requests) == 3  # 429, 503, then accepted
    sid = TWILIO["twilio_account_sid"]
    basic = base64.b64encode(f"{sid}:{TWILIO['twilio_auth_token']}".encode()).decode()
    for request in twilio.requests:
        assert request["path"] == f"/2010-04-01/Accounts/{sid}/Messages.json"
        assert request["auth"] == f"Basic {basic}"
        assert request["form"] == {
            "To": PHONE,
            "From": "+15550001111",
            "Body": "hello tw-1",
            "StatusCallback": f"https://sms.example.test/v1/{sms.tenant}/twilio/status",
        }
    assert sent.provider == "twilio" and sent.provider_id == f"SM{3:032d}"

    # Twilio's delivery report, signed as Twilio signs it; a forged one is refused.
    path = f"/v1/{sms.tenant}/twilio/status"
    form = {"MessageSid": sent.provider_id, "MessageStatus": "delivered", "AccountSid": sid}
    signature = twilio_signature("https://sms.example.test" + path, form)
    forged = await sms.http.post(path, data=form, headers={"X-Twilio-Signature": "bad"})
    assert forged.status_code == 403
    report = await sms.http.post(path, data=form, headers={"X-Twilio-Signature": signature})
    assert report.status_code == 204, report.text
    await sms.status_of("tw-1", "delivered")


async def test_twilio_refusals_are_final_and_unsubscribed_numbers_opt_out(
    start_sms: StartSms, twilio: FakeTwilio
) -> None:
    twilio.script = [
        (400, {"code": 21211, "message": "Invalid 'To' Phone Number"}),
        (400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient"}),
    ]
    sms = await start_sms(**TWILIO, twilio_base_url=twilio.url)
    await sms.publish("bad-number", to="+15555550999")
    failed = await sms.status_of("bad-number", "failed")
    assert "Invalid 'To' Phone Number" in failed.detail
    await sms.publish("unsubscribed", to="+15555550888")
    await sms.status_of("unsubscribed", "opted_out")
    await sms.settled()
    assert len(twilio.requests) == 2  # neither was retried
    assert (await sms.http.get(f"/v1/{sms.tenant}/opt-outs")).json() == ["+15555550888"]

    # An inbound STOP through Twilio's webhook, signature checked.
    path = f"/v1/{sms.tenant}/twilio/inbound"
    form = {"MessageSid": f"SM{0:032d}", "From": PHONE, "Body": "STOP", "To": "+15550001111"}
    signature = twilio_signature("https://sms.example.test" + path, form)
    reply = await sms.http.post(path, data=form, headers={"X-Twilio-Signature": signature})
    assert reply.status_code == 200 and "<Response>" in reply.text
    assert PHONE in (await sms.http.get(f"/v1/{sms.tenant}/opt-outs")).json()


async def test_api_needs_the_tenant_key(start_sms: StartSms) -> None:
    sms = await start_sms()
    anonymous = await sms.http.get(f"/v1/{sms.tenant}/messages", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    wrong = await sms.http.get(
        f"/v1/{sms.tenant}/messages", headers={"Authorization": "Bearer wrong-key-000000000"}
    )
    assert wrong.status_code == 401  # a key that opens no tenant
    # An unknown tenant looks like any other tenant's path: this key opens only its own.
    assert (await sms.http.get("/v1/nobody/messages")).status_code == 403


async def test_api_takes_a_key_that_is_only_in_the_keys_file(
    start_sms: StartSms, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    tenant, keys_file = unique("t"), tmp_path / "api-keys"
    keys_file.write_text(f"{tenant}:{API_KEY}\n")
    sms = await start_sms(tenant, api_keys="", api_keys_file=str(keys_file))
    await sms.messages()  # asserts 200: the key from the file opened the tenant
    bad = await sms.http.post(f"/v1/{sms.tenant}/opt-outs", json={"phone": "not-a-phone"})
    assert bad.status_code == 422
    assert derived_id(sms.tenant, "k") == derived_id(sms.tenant, "k")
