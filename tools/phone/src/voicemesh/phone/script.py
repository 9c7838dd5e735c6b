"""A scripted caller: speaks each line once the agent has finished its reply.

``CallWatcher`` follows one call on NATS the way an operator would (its transcript
segments, lifecycle events and tool events, core subscriptions, nothing consumed), and
``converse`` drives a connected ``PhoneCall`` through a script with it: wait for the agent
to speak and fall quiet, say the next line, check the reply, and so on until the script
ends or the call does. ``voicemesh call`` and the end-to-end tests share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.errors import InvalidMessage
from voicemesh.common.contracts.events import (
    AnyEvent,
    CallEnded,
    Speaker,
    ToolEvent,
    TranscriptSegment,
    decode_event,
)

__all__ = ["CallWatcher", "Caller", "Line", "ScriptMismatch", "converse"]


class Caller(Protocol):
    """Whoever holds the caller's end: a ``PhoneCall``, or a browser page in a test."""

    async def say(self, text: str) -> float: ...

    async def wait_quiet(
        self, quiet_s: float = 0.8, *, since: float = 0.0, timeout: float = 20.0
    ) -> None: ...


@dataclass(frozen=True)
class Line:
    """One thing the caller says, and words expected in the agent's answer to it."""

    say: str
    expect: str | None = None


class ScriptMismatch(AssertionError):
    """The agent answered a line with something the script did not expect."""


@dataclass
class Heard:
    at: float
    segment: TranscriptSegment


@dataclass
class CallWatcher:
    """Everything one call publishes on NATS, as it happens."""

    nc: NatsClient
    tenant: str
    call_id: str
    on_event: Callable[[AnyEvent], None] | None = None
    segments: list[Heard] = field(default_factory=list)
    lifecycle: list[AnyEvent] = field(default_factory=list)
    tools: list[ToolEvent] = field(default_factory=list)
    _subs: list[Subscription] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        t, c = self.tenant, self.call_id
        self._subs = [
            await self.nc.subscribe(subjects.call_transcript(t, c), cb=self._on_message),
            await self.nc.subscribe(subjects.call_lifecycle(t, c), cb=self._on_message),
            await self.nc.subscribe(subjects.event(t, "tool"), cb=self._on_message),
        ]
        await self.nc.flush()

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except InvalidMessage:
            return
        if event.call_id != self.call_id:
            return
        if isinstance(event, TranscriptSegment):
            if not event.final or any(
                h.segment.segment_id == event.segment_id for h in self.segments
            ):
                return
            self.segments.append(Heard(time.monotonic(), event))
        elif isinstance(event, ToolEvent):
            self.tools.append(event)
        else:
            self.lifecycle.append(event)
        if self.on_event is not None:
            self.on_event(event)
        self._changed.set()

    def lines(self, speaker: Speaker) -> list[Heard]:
        return [h for h in self.segments if h.segment.speaker is speaker]

    def ended(self) -> CallEnded | None:
        return next((e for e in self.lifecycle if isinstance(e, CallEnded)), None)

    def has(self, kind: str) -> bool:
        return any(getattr(e, "type", "") == kind for e in self.lifecycle)

    async def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Until ``predicate()`` is truthy (checked on every event and every 0.2 s)."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
        return value

    async def agent_line(self, count: int, timeout: float) -> Heard | None:
        """The agent's ``count``-th line once said, or ``None`` if the call ended first."""

        def said() -> Heard | bool | None:
            agent = self.lines(Speaker.AGENT)
            if len(agent) >= count:
                return agent[count - 1]
            return self.ended() is not None

        found = await self.wait(said, timeout, f"the agent's line {count}")
        return found if isinstance(found, Heard) else None


async def converse(
    call: Caller,
    watcher: CallWatcher,
    script: list[Line],
    *,
    reply_timeout_s: float = 25.0,
    quiet_s: float = 0.8,
    strict: bool = True,
    repeats: int = 2,
    on_say: Callable[[str], None] | None = None,
) -> int:
    """Hold the conversation: after the agent's greeting and each reply has been heard to
    the end, say the next line. Returns how many lines were said (repeats included).

    A reply without its line's ``expect`` words is usually the agent asking again (it did
    not catch the line): like a person, the caller says it again, up to ``repeats`` times;
    then, with ``strict``, ``ScriptMismatch`` is raised. Stops early, without error, when
    the call ends.
    """
    heard = await watcher.agent_line(1, reply_timeout_s)
    said = 0
    for line in script:
        for attempt in range(repeats + 1):
            if heard is None or watcher.ended() is not None:
                return said
            await call.wait_quiet(quiet_s=quiet_s, since=heard.at, timeout=reply_timeout_s)
            if on_say is not None:
                on_say(line.say)
            await call.say(line.say)
            said += 1
            count = len(watcher.lines(Speaker.AGENT)) + 1
            heard = await watcher.agent_line(count, reply_timeout_s)
            if heard is None or not line.expect:
                break
            if line.expect.lower() in heard.segment.text.lower():
                break
            if attempt == repeats and strict:
                understood = [h.segment.text for h in watcher.lines(Speaker.CALLER)][-1:]
                raise ScriptMismatch(
                    f"after {line.say!r} (heard as {understood}) the agent said "
                    f"{heard.segment.text!r}, expected it to contain {line.expect!r}"
                )
    if heard is not None and watcher.ended() is None:
        with contextlib.suppress(TimeoutError):
            await call.wait_quiet(quiet_s=quiet_s, since=heard.at, timeout=reply_timeout_s)
    return said
