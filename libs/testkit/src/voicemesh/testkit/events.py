"""Wire events as the services publish them, for tests and benches: transcript segments
with the agent's segment ids, and a mix of every kind the audit service records."""

from __future__ import annotations

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import (
    CallConnected,
    CallRequested,
    Envelope,
    SmsJob,
    Speaker,
    ToolEvent,
    TranscriptSegment,
)

__all__ = ["audited_events", "transcript_segment"]


def transcript_segment(
    tenant: str,
    call_id: str,
    speaker: Speaker,
    n: int,
    text: str,
    *,
    start_s: float,
    end_s: float,
    final: bool = True,
) -> TranscriptSegment:
    """``speaker``'s line number ``n`` of the call, with the segment id the agent gives it."""
    return TranscriptSegment(
        tenant=tenant,
        call_id=call_id,
        source="agent",
        segment_id=f"{call_id}:{speaker.value}:{n}",
        speaker=speaker,
        text=text,
        start_s=start_s,
        end_s=end_s,
        final=final,
    )


def audited_events(tenant: str, n: int, *, tag: str = "call") -> list[tuple[str, Envelope]]:
    """``n`` (subject, event) of every kind the audit service records, in turn: a call
    requested, the call connected, a tool call and an SMS job (``tag`` names the calls)."""
    out: list[tuple[str, Envelope]] = []
    for i in range(n):
        call = f"{tag}-{i}"
        lifecycle = subjects.call_lifecycle(tenant, call)
        kind = i % 4
        if kind == 0:
            out.append(
                (lifecycle, CallRequested(tenant=tenant, call_id=call, source="test", user_id="u1"))
            )
        elif kind == 1:
            out.append((lifecycle, CallConnected(tenant=tenant, call_id=call, source="test")))
        elif kind == 2:
            tool = ToolEvent(
                tenant=tenant,
                call_id=call,
                source="calendar",
                service="calendar",
                name="book",
                request_id=f"r{i}",
                ok=True,
                duration_ms=3.5,
            )
            out.append((subjects.event(tenant, "tool"), tool))
        else:
            job = SmsJob(
                tenant=tenant,
                source="agent",
                idempotency_key=f"{tag}-k{i}",
                to="+15550100",
                body="Your appointment is confirmed.",
            )
            out.append((subjects.sms_outbound(tenant), job))
    return out
