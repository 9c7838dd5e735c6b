"""The one interface every provider implements: speech to text, dialog, text to speech.

A provider makes, per call, a ``Transcriber`` (fed 20 ms frames of 16 kHz PCM during the
caller's speech, asked for the text at the end of the turn), a ``Conversation`` (greets,
then answers each caller turn, calling tools through ``CallTools``) and a ``Synthesizer``.
A reply can stream so the caller hears it begin before the provider has finished: its voice
(``Reply.speech``, OpenAI Realtime) or its sentences (``Reply.sentences``, OpenAI chat),
which the session voices one by one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from voicemesh.agent.profiles import Profile
from voicemesh.common.contracts.events import HandoffReason, ToolResult
from voicemesh.common.contracts.tenancy import Tenant
from voicemesh.common.runtime.tools import ToolClient

__all__ = [
    "CallContext",
    "CallTools",
    "Conversation",
    "HearsInterruptions",
    "PartialTranscriber",
    "Provider",
    "ProviderError",
    "Reply",
    "Synthesizer",
    "Transcriber",
    "TurnJudge",
    "WarmsUp",
    "prepended",
]


T = TypeVar("T")


class ProviderError(Exception):
    """A provider could not do its part (network, bad answer, timeout)."""


@dataclass
class Reply:
    """What the agent says next, and whether the call ends or goes to a person after it."""

    text: str
    hangup: bool = False
    handoff: HandoffReason | None = None
    intent: str | None = None
    #: The reply's voice as the provider produces it (s16le mono at ``speech_rate``), for a
    #: provider that speaks while it thinks: played as it arrives. ``text``, ``hangup`` and
    #: ``intent`` are final once it is exhausted; closing it early (the caller spoke over
    #: it) stops the provider. ``None``: the session synthesizes ``text``.
    speech: AsyncGenerator[bytes, None] | None = None
    speech_rate: int = 0
    #: The reply's text a sentence at a time as the provider writes it, for a provider that
    #: writes while it thinks: the session voices each sentence as it comes, the next one
    #: while the last plays. Final ``text`` etc. as for ``speech``.
    sentences: AsyncGenerator[str, None] | None = None


async def prepended(first: T, rest: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """``first``, then ``rest``: a stream whose first item a provider already awaited.
    Closing it closes ``rest`` (which stops the provider's work)."""
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


class CallTools:
    """The tool client bound to one call's tenant and call id."""

    def __init__(self, client: ToolClient, tenant: str, call_id: str) -> None:
        self._client = client
        self.tenant = tenant
        self.call_id = call_id
        self.calls: list[tuple[str, str]] = []

    async def call(
        self,
        service: str,
        name: str,
        arguments: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> ToolResult:
        self.calls.append((service, name))
        return await self._client.call(
            self.tenant,
            service,
            name,
            arguments,
            call_id=self.call_id,
            idempotency_key=idempotency_key,
        )


@dataclass
class CallContext:
    tenant: Tenant
    call_id: str
    profile: Profile
    tools: CallTools
    now: Callable[[], datetime]
    #: the caller's number as the tenant's backend vouched for it (E.164), if known
    phone: str | None = None


class Transcriber(Protocol):
    """Speech to text for one call, one utterance at a time."""

    async def open(self) -> None: ...

    def start_utterance(self) -> None: ...

    def feed(self, pcm: bytes) -> None:
        """20 ms of 16 kHz s16le mono; cheap, called on the event loop."""

    async def finish_utterance(self) -> str: ...

    async def close(self) -> None: ...


class Synthesizer(Protocol):
    sample_rate: int

    async def synthesize(self, text: str) -> bytes:
        """The whole utterance as s16le mono PCM at ``sample_rate``."""


@runtime_checkable
class PartialTranscriber(Protocol):
    """A transcriber that can tell, cheaply and at once, the text so far of an utterance."""

    def partial(self) -> str | None: ...


@runtime_checkable
class HearsInterruptions(Protocol):
    """A conversation that keeps what the agent said (a model's history) and must know when
    the caller cut a line short, or it would answer as if they had heard it all."""

    async def interrupted(self, said: str, heard: str, played_ms: int) -> None:
        """The caller spoke over ``said`` after ``played_ms`` of its audio, having heard
        about the words ``heard``."""


@runtime_checkable
class WarmsUp(Protocol):
    """A provider with something slow to load per profile, better loaded before calls."""

    async def warm(self, profiles: Iterable[Profile]) -> None: ...


@runtime_checkable
class TurnJudge(Protocol):
    """A conversation that can tell whether words already answer what it asked, so the
    turn can end after a short pause instead of the full end-of-turn wait."""

    def is_complete(self, text: str) -> bool: ...


class Conversation(Protocol):
    async def greeting(self) -> Reply: ...

    async def respond(self, text: str) -> Reply: ...


class Provider(Protocol):
    name: str

    def transcriber(self, context: CallContext) -> Transcriber: ...

    def synthesizer(self, context: CallContext) -> Synthesizer: ...

    def conversation(self, context: CallContext) -> Conversation: ...

    async def close(self) -> None: ...
