"""The NATS side of the gateway's calls: what a call says to the agent and hears from it.

Per call: caller audio out on ``audio.in``, agent audio, control and transcripts in, and the
call's lifecycle events. Lifecycle events go to JetStream through a per-call
``runtime.outbox.Outbox`` on the service's ``JetStreamPublisher``: in order for each call,
retried until JetStream has stored them (a lost ``CallConnected`` would leave the call
without its agent, a lost ``CallEnded`` crm, audit and push stale), with ids derived from
the tenant, the call and the event type (``contracts.ids.derived_id``), so JetStream's dedup
window absorbs a retry or a repeat from another worker or a restarted one. Control messages
arrive on core NATS and cannot be NAKed: one the gateway cannot act on is dead-lettered
through the service's ``Delivery`` policy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from pydantic import ValidationError

from voicemesh.common import (
    ControlCommand,
    ControlMessage,
    Envelope,
    InvalidMessage,
    MeshError,
    TranscriptSegment,
)
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.runtime.delivery import Delivery
from voicemesh.common.runtime.outbox import Outbox
from voicemesh.common.runtime.publisher import JetStreamPublisher

if TYPE_CHECKING:
    from voicemesh.gateway.calls import CallSession

__all__ = ["CONTROL_CONSUMER", "CallBus"]

log = logging.getLogger(__name__)

SOURCE = "gateway"
#: The consumer named in the dead letters of control messages.
CONTROL_CONSUMER = "gateway-control"


class CallBus:
    """Wires calls to NATS: the media connection, the event publisher, the delivery policy.

    ``on_hangup`` is called when the agent asks for a call to be ended.
    """

    def __init__(
        self,
        *,
        nats: Callable[[], NatsClient],
        events: JetStreamPublisher,
        delivery: Delivery,
        on_hangup: Callable[[CallSession], Awaitable[None]],
    ) -> None:
        self._nats = nats
        self._events = Outbox(events, name="gateway-lifecycle")
        self._delivery = delivery
        self._on_hangup = on_hangup

    def audio_in_publisher(self, call: CallSession) -> Callable[[bytes], Awaitable[None]]:
        """Publishes the caller's encoded frames on the call's ``audio.in``, counting them."""
        subject = subjects.audio_in(call.tenant, call.call_id)
        nc = self._nats()

        async def publish(data: bytes) -> None:
            call.seq += 1
            await nc.publish(subject, data)

        return publish

    async def subscribe(self, call: CallSession) -> None:
        """Agent audio into the call's playout, control and transcripts to the call."""
        nc = self._nats()

        async def on_audio(msg: Msg) -> None:
            call.playout.feed(msg.data)

        async def on_control(msg: Msg) -> None:
            await self.control(call, msg.data)

        async def on_transcript(msg: Msg) -> None:
            try:
                segment = TranscriptSegment.model_validate_json(msg.data)
            except ValidationError:
                return
            call.tell_page(
                {
                    "type": "transcript",
                    "speaker": segment.speaker.value,
                    "text": segment.text,
                    "final": segment.final,
                    "segment_id": segment.segment_id,
                }
            )

        t, c = call.tenant, call.call_id
        call.subscriptions = [
            await nc.subscribe(subjects.audio_out(t, c), cb=on_audio),
            await nc.subscribe(subjects.call_control(t, c), cb=on_control),
            await nc.subscribe(subjects.call_transcript(t, c), cb=on_transcript),
        ]

    async def control(self, call: CallSession, data: bytes) -> None:
        subject = subjects.call_control(call.tenant, call.call_id)
        try:
            message = ControlMessage.model_validate_json(data)
        except ValidationError as exc:
            await self._dead_letter(call, subject, data, exc)
            return
        if message.call_id != call.call_id or message.tenant != call.tenant:
            problem = InvalidMessage("control message names another call")
            await self._dead_letter(call, subject, data, problem)
            return
        if message.command is ControlCommand.INTERRUPT:
            call.playout.clear()
            call.tell_page({"type": "interrupt"})
        elif message.command is ControlCommand.HANGUP:
            await self._on_hangup(call)

    async def _dead_letter(
        self, call: CallSession, subject: str, data: bytes, exc: Exception
    ) -> None:
        """Core-NATS input cannot be NAKed: keep it in the tenant's DLQ with the reason."""
        entry = self._delivery.dead_letter(
            subject=subject, consumer=CONTROL_CONSUMER, body=data, exc=exc, deliveries=1
        ).model_copy(update={"call_id": call.call_id})
        try:
            await self._delivery.store_dead_letter(entry)
        except Exception as err:
            log.error("could not publish a dead letter: %s", type(err).__name__)

    async def lifecycle(self, call: CallSession, kind: type[Envelope], **fields: Any) -> None:
        """Queue the call's ``kind`` lifecycle event (once per call and type) for JetStream;
        it is published after the call's earlier events, retried until stored."""
        event = kind(tenant=call.tenant, call_id=call.call_id, source=SOURCE, **fields)
        type_ = str(getattr(event, "type", kind.__name__))
        event = event.model_copy(update={"event_id": derived_id(call.tenant, call.call_id, type_)})
        subject = subjects.call_lifecycle(call.tenant, call.call_id)
        # CallConnected and CallEnded are published from aiortc and timer callbacks, outside
        # the offer's request: attach the call's trace so the event stays in it.
        token = otel_context.attach(call.trace) if call.trace is not None else None
        try:
            self._events.put(call.call_id, event, subject)
        except MeshError as exc:  # the outbox is full or closed: say so, never block a call
            log.error("could not queue %s: %s", type_, exc)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def drain(self, timeout: float) -> None:
        """On shutdown: give the queued lifecycle events ``timeout`` seconds to be stored."""
        await self._events.drain(timeout)
