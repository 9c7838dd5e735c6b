"""The transcript service as a real process on a real JetStream, traced to a real receiver.

Segments arrive out of order and twice and come back once each, in speaking order, as
JSON, text and WebVTT; search finds them; malformed segments are dead-lettered while the
service keeps serving; and for a healthcare tenant no transcript text or search text
reaches the logs or the spans (a salon tenant's search text does reach its span, which
proves the scan would have seen it).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from nats.aio.client import Client as NatsClient

from voicemesh.common import DeadLetter, Speaker, TranscriptSegment
from voicemesh.common.contracts import streams, subjects
from voicemesh.testkit.events import transcript_segment
from voicemesh.testkit.fixtures import OtlpReceiver, ProcessTracker, wait_until

HC_KEY = "hc-transcript-key-0123456789"
SALON_KEY = "salon-transcript-key-0123456789"
PHI_WORDS = ("metformin", "schizoaffective")


def _segments(tenant: str, call: str) -> list[TranscriptSegment]:
    lines = [
        (Speaker.AGENT, "Thanks for calling the clinic, how can I help?"),
        (Speaker.CALLER, "I need a refill of my metformin prescription."),
        (Speaker.AGENT, "Of course. Is this for your schizoaffective follow-up too?"),
        (Speaker.CALLER, "Yes, Tuesday morning if possible."),
    ]
    counts = {Speaker.AGENT: 0, Speaker.CALLER: 0}
    out = []
    for i, (speaker, text) in enumerate(lines):
        counts[speaker] += 1
        out.append(
            transcript_segment(
                tenant, call, speaker, counts[speaker], text, start_s=i * 3.0, end_s=i * 3.0 + 2.5
            )
        )
    return out


async def _publish(nats: NatsClient, segment: TranscriptSegment, msg_id: str | None = None) -> None:
    await nats.jetstream().publish(
        subjects.call_transcript(segment.tenant, segment.call_id),
        segment.model_dump_json().encode(),
        headers={"Nats-Msg-Id": msg_id or segment.event_id},
    )


async def test_transcripts_are_stored_once_in_order_exported_searched_and_phi_stays_out(
    nats: NatsClient,
    nats_url: str,
    processes: ProcessTracker,
    otlp_receiver: OtlpReceiver,
    sqlite_url: str,
    unique: Callable[[str], str],
) -> None:
    js = nats.jetstream()
    await streams.apply(js, services={"transcript"})
    hc, salon = unique("hc"), unique("salon")
    dead = await js.subscribe(subjects.dead_letter(hc), stream="DLQ")
    service = processes.python_module(
        "voicemesh.transcript",
        {
            "VOICEMESH_NATS_URL": nats_url,
            "VOICEMESH_TENANT": "*",
            "VOICEMESH_TENANTS": f"{hc}:healthcare,{salon}:salon",
            "VOICEMESH_DATABASE_URL": sqlite_url,
            "VOICEMESH_API_KEYS": f"{hc}:{HC_KEY},{salon}:{SALON_KEY}",
            "VOICEMESH_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "VOICEMESH_LOG_LEVEL": "DEBUG",
        },
        name="transcript",
    )
    await service.wait_healthy(timeout=30)

    call = unique("c")
    segments = _segments(hc, call)
    # out of order, and the second one twice (a redelivery under a new message id)
    for segment in (segments[2], segments[0], segments[3], segments[1]):
        await _publish(nats, segment)
    await _publish(nats, segments[1], msg_id=unique("again"))
    # malformed: not JSON; PHI in a text longer than allowed; a subject for another call
    subject = subjects.call_transcript(hc, call)
    await js.publish(subject, b"{not json", headers={"Nats-Msg-Id": unique("bad")})
    too_long = segments[0].model_dump(mode="json") | {"text": "metformin " * 900}
    await js.publish(subject, json.dumps(too_long).encode(), headers={"Nats-Msg-Id": unique("bad")})
    wrong_call = _segments(hc, unique("other"))[0]
    await js.publish(
        subject, wrong_call.model_dump_json().encode(), headers={"Nats-Msg-Id": unique("bad")}
    )

    letters = [
        DeadLetter.model_validate_json((await dead.next_msg(timeout=20)).data) for _ in range(3)
    ]
    reasons = [d.reason for d in letters]
    assert all(d.source == "transcript" and d.subject == subject for d in letters)
    assert any("does not match its subject" in r for r in reasons), reasons
    assert any("text" in r for r in reasons), reasons
    assert not any(word in r for r in reasons for word in PHI_WORDS)

    base = f"http://127.0.0.1:{service.http_port}/v1/{hc}"
    auth = {"Authorization": f"Bearer {HC_KEY}"}
    async with httpx.AsyncClient(timeout=5) as client:

        async def complete() -> bool:
            r = await client.get(f"{base}/calls/{call}/transcript", headers=auth)
            return r.status_code == 200 and len(r.json()["segments"]) == 4

        await wait_until(complete, timeout=20, what="the four segments")
        body = (await client.get(f"{base}/calls/{call}/transcript", headers=auth)).json()
        assert [s["segment_id"] for s in body["segments"]] == [s.segment_id for s in segments]

        text = await client.get(f"{base}/calls/{call}/transcript/export", headers=auth)
        assert text.headers["content-type"].startswith("text/plain")
        assert text.text.splitlines()[1] == (
            "[00:00:03] Caller: I need a refill of my metformin prescription."
        )
        vtt = await client.get(
            f"{base}/calls/{call}/transcript/export", headers=auth, params={"format": "vtt"}
        )
        assert vtt.headers["content-type"].startswith("text/vtt")
        assert vtt.text.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:02.500\n<v Agent>")
        exported = await client.get(
            f"{base}/calls/{call}/transcript/export", headers=auth, params={"format": "json"}
        )
        assert exported.json() == body
        assert f'filename="{call}.json"' in exported.headers["content-disposition"]

        found = (
            await client.get(
                f"{base}/transcripts/search", headers=auth, params={"q": "SCHIZOAFFECTIVE"}
            )
        ).json()
        assert [h["segment_id"] for h in found["hits"]] == [segments[2].segment_id]
        salon_search = await client.get(
            f"http://127.0.0.1:{service.http_port}/v1/{salon}/transcripts/search",
            headers={"Authorization": f"Bearer {SALON_KEY}"},
            params={"q": "balayage"},
        )
        assert salon_search.json()["hits"] == []

        # the API key opens only its own tenant; bad input is a 4xx
        calls = await client.get(f"{base}/calls", headers=auth)
        assert [c["call_id"] for c in calls.json()] == [call]
        assert (await client.get(f"{base}/calls/{call}/transcript")).status_code == 401
        salon_key = {"Authorization": f"Bearer {SALON_KEY}"}
        assert (
            await client.get(f"{base}/calls/{call}/transcript", headers=salon_key)
        ).status_code == 403
        assert (await client.get(f"{base}/calls/nope/transcript", headers=auth)).status_code == 404
        bad_format = {"format": "docx"}
        assert (
            await client.get(
                f"{base}/calls/{call}/transcript/export", headers=auth, params=bad_format
            )
        ).status_code == 422
        assert (
            await client.get(f"{base}/transcripts/search", headers=auth, params={"q": ""})
        ).status_code == 422

    assert service.alive()
    # The salon search text reaches its span: the scan below can see span attributes.
    await otlp_receiver.wait_for(lambda s: s.attributes.get("transcript.query") == "balayage")
    await otlp_receiver.wait_for(
        lambda s: s.name == "transcript.store" and s.attributes.get("voicemesh.call_id") == call
    )
    await otlp_receiver.wait_for(
        lambda s: s.name == "transcript.search" and s.attributes.get("voicemesh.tenant") == hc
    )
    service.terminate()  # flushes the remaining spans and log lines
    spans = [s for s in otlp_receiver.snapshot() if s.service == "transcript"]
    span_text = json.dumps([[s.name, s.attributes] for s in spans]).lower()
    log = service.log().lower()
    assert f"segment {call}:caller:1 stored" in log  # the log is there, with DEBUG lines
    for secret in (*PHI_WORDS, "refill", "tuesday morning"):
        assert secret not in span_text, f"{secret!r} leaked into a span"
        assert secret not in log, f"{secret!r} leaked into the log"
