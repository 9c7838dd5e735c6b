"""Twilio's webhooks as a hostile network sends them, and Twilio's ``Retry-After`` honoured.

Signatures are computed by ``conftest.twilio_signature``, written from Twilio's documented
algorithm apart from the service, never with the service's own check.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import urlencode

import httpx
import pytest

from voicemesh.sms.providers import Throttled, TwilioProvider

from .conftest import PHONE, TWILIO, FakeTwilio, Sms, StartSms, twilio_signature

PUBLIC = str(TWILIO["public_url"])
SENDER = str(TWILIO["sender_id"])
_sids = itertools.count(1)

Fields = list[tuple[str, str]]


def message_sid() -> str:
    return f"SM{next(_sids):032x}"


def inbound(body: str, sid: str, *extra: tuple[str, str]) -> Fields:
    """An inbound SMS webhook's fields, as Twilio posts them (a subset)."""
    return [
        ("MessageSid", sid),
        ("AccountSid", str(TWILIO["twilio_account_sid"])),
        ("From", PHONE),
        ("To", SENDER),
        ("Body", body),
        *extra,
    ]


async def post(
    sms: Sms, path: str, fields: Fields, *, signed_url: str | None = None
) -> httpx.Response:
    """POST ``fields`` to ``path`` signed for ``signed_url`` (the public URL of the path)."""
    signature = twilio_signature(signed_url or PUBLIC + path, fields)
    return await sms.http.post(
        path,
        content=_form(fields),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )


def _form(fields: Fields) -> bytes:
    return urlencode(fields).encode()


async def opted_out(sms: Sms) -> bool:
    response = await sms.http.get(f"/v1/{sms.tenant}/opt-outs")
    return PHONE in response.json()


async def test_repeated_fields_are_signed_as_twilio_signs_them(start_sms: StartSms) -> None:
    """Twilio signs every value of a repeated field; collapsing them to one refuses Twilio."""
    sms = await start_sms(**TWILIO)
    path = f"/v1/{sms.tenant}/twilio/inbound"
    fields = inbound(
        "STOP",
        message_sid(),
        ("MediaUrl", "https://media.example.test/b"),
        ("MediaUrl", "https://media.example.test/a"),
    )
    response = await post(sms, path, fields)
    assert response.status_code == 200, response.text
    assert "<Response>" in response.text and await opted_out(sms)


async def test_the_url_is_checked_with_and_without_the_default_port(
    start_sms: StartSms,
) -> None:
    """Twilio may sign ``https://host/…`` or ``https://host:443/…`` for the same webhook."""
    sms = await start_sms(**TWILIO)
    path = f"/v1/{sms.tenant}/twilio/inbound"
    with_port = "https://sms.example.test:443" + path
    assert (await post(sms, path, inbound("hi", message_sid()), signed_url=with_port)).is_success
    assert (await post(sms, path, inbound("hi", message_sid()))).is_success
    wrong_port = "https://sms.example.test:8443" + path
    refused = await post(sms, path, inbound("hi", message_sid()), signed_url=wrong_port)
    assert refused.status_code == 403

    # Configured with the port, a signature over the URL without it is Twilio's too.
    ported = await start_sms(**{**TWILIO, "public_url": "https://sms.example.test:443"})
    path = f"/v1/{ported.tenant}/twilio/inbound"
    without_port = "https://sms.example.test" + path
    response = await post(ported, path, inbound("hi", message_sid()), signed_url=without_port)
    assert response.status_code == 200, response.text


async def test_a_replayed_inbound_message_is_applied_once(start_sms: StartSms) -> None:
    """A STOP sent again (Twilio's retry, or a captured request replayed) after the phone
    replied START must not opt it out again."""
    sms = await start_sms(**TWILIO)
    path = f"/v1/{sms.tenant}/twilio/inbound"
    stop = inbound("STOP", message_sid())
    assert (await post(sms, path, stop)).status_code == 200
    assert await opted_out(sms)
    assert (await post(sms, path, inbound("START", message_sid()))).status_code == 200
    assert not await opted_out(sms)
    replay = await post(sms, path, stop)
    assert replay.status_code == 200 and "<Response>" in replay.text  # harmless to Twilio
    assert not await opted_out(sms)


async def test_delivery_reports_only_move_a_message_forward(
    start_sms: StartSms, twilio: FakeTwilio
) -> None:
    """A repeated report is accepted and changes nothing; a stale or conflicting one that
    arrives after the final status does not move the message back."""
    sms = await start_sms(**TWILIO, twilio_base_url=twilio.url)
    await sms.publish("report")
    sent = await sms.status_of("report", "sent")
    assert sent.provider_id
    path = f"/v1/{sms.tenant}/twilio/status"

    def report(status: str) -> Fields:
        return [("MessageSid", sent.provider_id or ""), ("MessageStatus", status)]

    for status in ("delivered", "delivered", "sent", "undelivered", "failed"):
        response = await post(sms, path, report(status))
        assert response.status_code == 204, (status, response.text)
    # Events leave the service in order: once a later job's is here, any report's is too.
    await sms.publish("marker")
    await sms.status_of("marker", "sent")
    events = [s.status for s in sms.statuses if s.idempotency_key == "report"]
    assert events == ["sent", "delivered"], events
    [row] = [r for r in await sms.messages() if r["idempotency_key"] == "report"]
    assert row["status"] == "delivered"


async def test_a_body_that_is_not_utf8_is_a_bad_request(start_sms: StartSms) -> None:
    sms = await start_sms(**TWILIO)
    path = f"/v1/{sms.tenant}/twilio/inbound"
    for body in (b"From=%2B15555550123&Body=\xff\xfe", b"From=%2B15555550123&Body=%FF%FE"):
        response = await sms.http.post(
            path,
            content=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature(PUBLIC + path, {}),
            },
        )
        assert response.status_code == 400, (body, response.status_code, response.text)


@pytest.mark.parametrize("declared", [True, False])
async def test_an_oversized_body_is_refused_before_it_is_read_whole(
    start_sms: StartSms, declared: bool
) -> None:
    """64 KiB is far beyond any Twilio webhook; a bigger body is 413, even signed, and
    whether or not its length is declared up front."""
    sms = await start_sms(**TWILIO)
    path = f"/v1/{sms.tenant}/twilio/inbound"
    fields = inbound("STOP", message_sid(), ("Padding", "x" * (64 * 1024)))
    form = _form(fields)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(form), 8192):
            yield form[start : start + 8192]

    response = await sms.http.post(
        path,
        content=form if declared else chunks(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(PUBLIC + path, fields),
        },
    )
    assert response.status_code == 413, response.text
    assert not await opted_out(sms)


async def test_an_unknown_tenant_answers_exactly_like_a_bad_signature(
    start_sms: StartSms,
) -> None:
    """Even correctly signed, a tenant that does not exist is not told apart from a forgery:
    the webhook cannot be used to enumerate tenants."""
    sms = await start_sms(**TWILIO)
    fields = inbound("hi", message_sid())
    forged = await sms.http.post(
        f"/v1/{sms.tenant}/twilio/inbound",
        content=_form(fields),
        headers={"X-Twilio-Signature": "Zm9yZ2VkLXNpZ25hdHVyZQ=="},
    )
    unknown = await post(sms, "/v1/no-such-tenant/twilio/inbound", fields)
    assert forged.status_code == unknown.status_code == 403
    assert forged.content == unknown.content


async def test_twilio_retry_after_is_honoured(start_sms: StartSms, twilio: FakeTwilio) -> None:
    """Twilio answers 429, then 503, each with ``Retry-After: 2``: the next attempt comes
    no sooner than that (the delivery policy alone would retry after 1 s)."""
    twilio.script = [(429, {"code": 20429, "message": "Too Many Requests"}), (503, {})]
    twilio.retry_after, twilio.retry_after_on_503 = 2, True
    sms = await start_sms(**TWILIO, twilio_base_url=twilio.url)
    await sms.publish("later")
    await sms.status_of("later", "sent", timeout=20)
    times = [r["at"] for r in twilio.requests]
    assert len(times) == 3
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    assert all(gap >= 2.0 for gap in gaps), gaps
    await sms.settled()


async def test_retry_after_may_be_an_http_date(twilio: FakeTwilio) -> None:
    twilio.script = [(429, {}), (503, {})]
    twilio.retry_after = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    twilio.retry_after_on_503 = True
    provider = TwilioProvider(
        str(TWILIO["twilio_account_sid"]), str(TWILIO["twilio_auth_token"]), base_url=twilio.url
    )
    try:
        for _ in range(2):
            with pytest.raises(Throttled) as caught:
                await provider.send(PHONE, "hi", SENDER)
            assert caught.value.retry_after_s is not None
            assert 25 <= caught.value.retry_after_s <= 30
    finally:
        await provider.close()
