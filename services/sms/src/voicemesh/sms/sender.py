"""Sending one SMS job: claim it by key, honour opt-outs and the tenant's rate, send, record.

The order is what makes a job send once: the job's row is committed (claimed by its
idempotency key) before the provider is called, and marked sent right after. A redelivered
job whose row is already final is not sent again; its status event is re-published with
the same event id, which JetStream deduplicates. (A crash between the provider's answer and
the commit can still send twice: providers offer no idempotency key to close that gap.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from voicemesh.common import JetStreamPublisher, SmsJob, UnavailableError
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import SmsStatus
from voicemesh.common.contracts.ids import derived_id
from voicemesh.common.runtime.db import Database
from voicemesh.common.runtime.ratelimit import SlidingWindowLimiter
from voicemesh.sms.models import InboundMessage, OptOut, SmsMessage
from voicemesh.sms.providers import ProviderRejected, Receipt, SmsProvider, Throttled

__all__ = ["RateLimiter", "SmsSender", "is_start", "is_stop"]

log = logging.getLogger(__name__)

STOP_WORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout"})
START_WORDS = frozenset({"start", "unstop", "yes"})
#: Longest wait between two looks at the rate limit (the job heartbeats each time).
MAX_RATE_WAIT_S = 5.0
FINAL = frozenset({"sent", "delivered", "failed", "opted_out", "undelivered"})
#: The longest ``Retry-After`` waited out within a delivery, and how many times per delivery.
MAX_THROTTLE_WAIT_S = 60.0
MAX_THROTTLE_WAITS = 5
#: While waiting out a ``Retry-After``, the job tells JetStream it is alive this often.
THROTTLE_HEARTBEAT_S = 5.0
#: What a message's row keeps of its job.
_KEPT_OF_JOB = {"tenant", "idempotency_key", "to", "body", "purpose", "call_id"}
#: How far along a message is: a provider's delivery report only ever moves it forward.
PROGRESS = {"pending": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2, "opted_out": 2}
#: The provider's delivery reports that are kept (Twilio's final ``MessageStatus`` values).
REPORTED = frozenset({"delivered", "undelivered", "failed"})


def is_stop(body: str) -> bool:
    return body.strip().strip(".!").lower() in STOP_WORDS


def is_start(body: str) -> bool:
    return body.strip().strip(".!").lower() in START_WORDS


def _now() -> datetime:
    return datetime.now(UTC)


class RateLimiter:
    """At most ``limit`` texts per tenant in any ``window_s`` seconds, across replicas.

    The runtime's one rate limiter (``limits``' moving window on Redis), strict: with Redis
    unreachable the job is retried rather than sent unthrottled.
    """

    def __init__(self, redis: Redis, *, limit: int, window_s: int) -> None:
        self._window = SlidingWindowLimiter(
            redis, "sms", limit=limit, window_s=window_s, fail_open=False
        )
        self.limit = limit
        self.window_s = window_s

    async def acquire(self, tenant: str, *, heartbeat: Callable[[], Awaitable[None]]) -> None:
        """Wait until the tenant may send one more text; ``heartbeat`` keeps the job leased."""
        while not (decision := await self._window.hit(tenant)).allowed:
            # Over the limit: wait for the oldest text to leave the window instead of
            # failing the job, telling JetStream we are still working on it.
            await heartbeat()
            await asyncio.sleep(min(max(decision.wait_s, 0.05), MAX_RATE_WAIT_S))


@dataclass(eq=False)
class SmsSender:
    """The sms service's rules, shared by the job consumer, the tool and the HTTP API."""

    db: Database
    provider: SmsProvider
    limiter: RateLimiter
    events: JetStreamPublisher
    _: KW_ONLY
    sender_id: str
    status_callback: Callable[[str], str | None] = lambda _tenant: None

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self.db.model_session("sms")

    async def handle(self, job: SmsJob, *, heartbeat: Callable[[], Awaitable[None]]) -> str:
        """Deliver ``job`` once; returns the message's final status."""
        row = await self._claim(job)
        if row.status in FINAL:
            await self._announce(row)  # a redelivery: re-announce, do not resend
            return row.status
        if await self.opted_out(job.tenant, job.to):
            return await self._finish(row, "opted_out", detail="the recipient replied STOP")
        await self.limiter.acquire(job.tenant, heartbeat=heartbeat)
        started = time.perf_counter()
        try:
            receipt = await self._send(job, heartbeat)
        except ProviderRejected as exc:
            if exc.unsubscribed:
                await self.opt_out(job.tenant, job.to, source="provider")
                return await self._finish(row, "opted_out", detail=str(exc))
            return await self._finish(row, "failed", detail=str(exc))
        log.info(
            "sms %s sent via %s in %.0f ms",
            row.id,
            self.provider.name,
            (time.perf_counter() - started) * 1000,
        )
        return await self._finish(row, "sent", provider_id=receipt.provider_id)

    async def _send(self, job: SmsJob, heartbeat: Callable[[], Awaitable[None]]) -> Receipt:
        """The provider's receipt. When the provider asks for time (``Retry-After``), the job
        waits that long, still leased, before it tries again: a throttle is not a failed
        delivery, and must not use up the job's deliveries. A wait longer than
        ``MAX_THROTTLE_WAIT_S``, or more than ``MAX_THROTTLE_WAITS`` of them, goes back to the
        delivery policy as ``Throttled`` (a NAK)."""
        waits = 0
        while True:
            try:
                return await self.provider.send(
                    job.to,
                    job.body,
                    self.sender_id,
                    status_callback=self.status_callback(job.tenant),
                )
            except Throttled as exc:
                wait = exc.retry_after_s
                if wait is None or wait > MAX_THROTTLE_WAIT_S or waits >= MAX_THROTTLE_WAITS:
                    raise
                waits += 1
                log.warning("%s asked for %.1f s before the next text", self.provider.name, wait)
                deadline = time.monotonic() + wait
                while (left := deadline - time.monotonic()) > 0:
                    await heartbeat()
                    await asyncio.sleep(min(left, THROTTLE_HEARTBEAT_S))

    async def _claim(self, job: SmsJob) -> SmsMessage:
        now = _now()
        kept = job.model_dump(include=_KEPT_OF_JOB)
        row = SmsMessage(**kept, provider=self.provider.name, created_at=now, updated_at=now)
        try:
            async with self.session() as session:
                session.add(row)
                await session.commit()
                return row
        except IntegrityError:
            pass
        async with self.session() as session:
            existing = (
                await session.exec(
                    select(SmsMessage).where(
                        SmsMessage.tenant == job.tenant,
                        SmsMessage.idempotency_key == job.idempotency_key,
                    )
                )
            ).one()
            existing.attempts += 1
            session.add(existing)
            await session.commit()
            return existing

    async def _finish(
        self, row: SmsMessage, status: str, *, provider_id: str | None = None, detail: str = ""
    ) -> str:
        async with self.session() as session:
            stored = await session.get(SmsMessage, row.id)
            if stored is None:  # claimed above and never deleted: a broken database
                raise UnavailableError(f"sms message {row.id} vanished")
            stored.status = status
            stored.provider_id = provider_id
            stored.detail = detail[:512]
            stored.updated_at = _now()
            if status == "sent":
                stored.sent_at = stored.updated_at
            session.add(stored)
            await session.commit()
        await self._announce(stored)
        return status

    async def _announce(self, row: SmsMessage) -> None:
        event = SmsStatus(
            event_id=derived_id(row.tenant, row.idempotency_key, row.status),
            tenant=row.tenant,
            call_id=row.call_id,
            source="sms",
            idempotency_key=row.idempotency_key,
            status=row.status,  # only FINAL statuses reach here
            to=row.to,
            provider=row.provider,
            provider_id=row.provider_id,
            detail=row.detail,
        )
        await self.events.publish(event, subjects.event(row.tenant, "sms"))

    # -- status callbacks -------------------------------------------------------------------

    async def provider_status(self, tenant: str, provider_id: str, status: str) -> bool:
        """Record a delivery report; returns False for a message this tenant never sent.

        A report only moves a message forward: a repeat (Twilio retries its callbacks) or
        one that arrives after a final status changes nothing and announces nothing.
        """
        async with self.session() as session:
            row = (
                await session.exec(
                    select(SmsMessage).where(
                        SmsMessage.tenant == tenant, SmsMessage.provider_id == provider_id
                    )
                )
            ).first()
            if row is None:
                return False
            if status not in REPORTED:
                return True  # queued/sending/sent progress reports change nothing we keep
            behind = [s for s, step in PROGRESS.items() if step < PROGRESS[status]]
            # Conditional, so that of two reports racing only one moves the message.
            moved = await session.exec(
                update(SmsMessage)
                .where(col(SmsMessage.id) == row.id, col(SmsMessage.status).in_(behind))
                .values(status=status, updated_at=_now())
            )
            await session.commit()
            if moved.rowcount != 1:
                return True
            await session.refresh(row)
        await self._announce(row)
        return True

    # -- opt-outs ---------------------------------------------------------------------------

    async def opted_out(self, tenant: str, phone: str) -> bool:
        async with self.session() as session:
            return await session.get(OptOut, (tenant, phone)) is not None

    async def opt_out(self, tenant: str, phone: str, *, source: str = "reply") -> None:
        try:
            async with self.session() as session:
                session.add(OptOut(tenant=tenant, phone=phone, source=source, created_at=_now()))
                await session.commit()
        except IntegrityError:
            pass  # already opted out

    async def opt_in(self, tenant: str, phone: str) -> bool:
        async with self.session() as session:
            row = await session.get(OptOut, (tenant, phone))
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
            return True

    async def inbound(
        self, tenant: str, sender: str, body: str, *, message_id: str | None = None
    ) -> str:
        """A reply from a phone: STOP opts it out, START opts it back in.

        A provider's message (``message_id``) acts once: the same message again, retried or
        replayed (an old STOP after a newer START), is a ``duplicate`` that changes nothing.
        It is remembered after it acted, so a crash in between lets Twilio's retry act.
        """
        if message_id is not None:
            async with self.session() as session:
                if await session.get(InboundMessage, (tenant, message_id)) is not None:
                    return "duplicate"
        result = "ignored"
        if is_stop(body):
            await self.opt_out(tenant, sender)
            result = "opted_out"
        elif is_start(body):
            await self.opt_in(tenant, sender)
            result = "opted_in"
        if message_id is not None:
            try:
                async with self.session() as session:
                    session.add(
                        InboundMessage(tenant=tenant, message_id=message_id, received_at=_now())
                    )
                    await session.commit()
            except IntegrityError:
                pass  # the same message, acted on concurrently: the same action
        return result

    async def opt_outs(self, tenant: str) -> list[OptOut]:
        async with self.session() as session:
            rows = await session.exec(
                select(OptOut).where(OptOut.tenant == tenant).order_by(col(OptOut.created_at))
            )
            return list(rows.all())

    async def messages(self, tenant: str, *, limit: int, to: str | None = None) -> list[SmsMessage]:
        query = select(SmsMessage).where(SmsMessage.tenant == tenant)
        if to:
            query = query.where(SmsMessage.to == to)
        async with self.session() as session:
            rows = await session.exec(
                query.order_by(col(SmsMessage.created_at).desc()).limit(limit)
            )
            return list(rows.all())
