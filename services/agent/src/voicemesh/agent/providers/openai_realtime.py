"""The ``openai-realtime`` provider: speech to speech over the OpenAI Realtime WebSocket.

One Realtime connection per call (``client.realtime.connect``, GA event names). It fits the
common ``Provider`` interface so the call session keeps owning voice activity, turn taking,
barge-in, silence prompts and degradation: the agent's own end-of-turn detector commits the
input buffer (server VAD is off), the transcriber returns the Realtime input transcription,
the conversation asks for a response (running its function calls as NATS tools and sending
``function_call_output`` items until the model speaks) and hands the session the model's
voice as it streams in (``Reply.speech``); a barge-in cancels the response. Fixed lines
(the greeting, "are you still there?") are spoken by the model out of band
(``conversation: "none"``) in the same voice.

A dropped connection or an ``error`` event fails the waiting step with ``ProviderError``;
the session then apologises in the offline voice and hands the call off, never silence.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from voicemesh.agent.providers.base import CallContext, ProviderError, Reply, prepended
from voicemesh.agent.providers.openai_chat import OpenAIOptions
from voicemesh.agent.providers.openai_tools import END_CALL, MAX_TOOL_STEPS, ToolBox
from voicemesh.agent.speech import IN_RATE, resample

__all__ = ["OpenAIRealtimeProvider", "RealtimeLink"]

log = logging.getLogger(__name__)

RATE: Final = 24000  # Realtime "audio/pcm" is 24 kHz s16le mono both ways
#: Caller audio is sent in appends of at least this much (100 ms): fewer, larger messages.
APPEND_BYTES = 24000 // 10 * 2
_CLOSED = object()


@dataclass
class _Response:
    """What one ``response.create`` produced (so far, while it streams)."""

    audio: bytearray = field(default_factory=bytearray)
    transcript: str = ""
    parts: list[str] = field(default_factory=list)  # transcript deltas until it is done
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (call_id, name, args)
    message_id: str | None = None  # the conversation item of the spoken message

    @property
    def text(self) -> str:
        return (self.transcript or "".join(self.parts)).strip()

    @property
    def audio_ms(self) -> int:
        return len(self.audio) * 1000 // (2 * RATE)


class RealtimeLink:
    """One call's Realtime connection: a reader task, a sender task and the pending audio."""

    def __init__(self, client: AsyncOpenAI, context: CallContext, options: OpenAIOptions) -> None:
        self._client = client
        self._options = options
        self._timeout = options.timeout_s
        self.context = context
        self.toolbox = ToolBox(context)
        self.failure: str | None = None
        self._conn: AsyncRealtimeConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._outgoing = bytearray()
        self._clear_first = False
        self._awaiting_transcript = False
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._response_lock = asyncio.Lock()
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._transcripts: asyncio.Queue[Any] = asyncio.Queue()

    # -- connection ----------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._conn = await asyncio.wait_for(
                self._client.realtime.connect(model=self._options.realtime_model).enter(),
                self._timeout,
            )
            await self._conn.session.update(
                session={
                    "type": "realtime",
                    "instructions": self.toolbox.instructions(),
                    "tools": self.toolbox.realtime_tools(),  # type: ignore[typeddict-item]
                    "output_modalities": ["audio"],
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": RATE},
                            "turn_detection": None,
                            "transcription": {"model": self._options.transcribe_model},
                        },
                        "output": {
                            "format": {"type": "audio/pcm", "rate": RATE},
                            "voice": self._options.voice,
                        },
                    },
                }
            )
        except Exception as exc:
            # Any failure to connect (refused, 401 at the handshake, timeout, a vendor error)
            # is the provider's: the call still goes on, and its greeting apologises.
            self._fail(f"connect: {type(exc).__name__}")
            return
        self._reader = asyncio.create_task(
            self._read(), name=f"realtime-read-{self.context.call_id}"
        )
        self._sender = asyncio.create_task(
            self._send_audio(), name=f"realtime-send-{self.context.call_id}"
        )

    async def close(self) -> None:
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sender = self._reader = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            log.warning("realtime connection failed (%s)", reason)
            self.failure = reason
        self._events.put_nowait(_CLOSED)
        self._transcripts.put_nowait(_CLOSED)

    async def _read(self) -> None:
        assert self._conn is not None
        try:
            async for event in self._conn:
                kind = getattr(event, "type", None)
                if kind == "conversation.item.input_audio_transcription.completed":
                    self._transcripts.put_nowait(str(getattr(event, "transcript", "")))
                elif kind == "conversation.item.input_audio_transcription.failed":
                    self._transcripts.put_nowait("")
                elif kind == "error":
                    error = getattr(event, "error", None)
                    code = getattr(error, "code", None)
                    if code == "response_cancel_not_active":
                        continue  # a barge-in's cancel that came after the response ended
                    log.warning("realtime error event: %s", code)
                    self._events.put_nowait(event)
                    if self._awaiting_transcript:  # most likely the commit was refused
                        self._transcripts.put_nowait("")
                elif isinstance(kind, str) and kind.startswith("response."):
                    self._events.put_nowait(event)
            self._fail("closed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(type(exc).__name__)

    async def _send(self, event: dict[str, Any]) -> None:
        if self.failure is not None or self._conn is None:
            raise ProviderError(f"realtime connection is down ({self.failure})")
        try:
            async with self._send_lock:
                await self._conn.send(event)  # type: ignore[arg-type]  # plain client event
        except Exception as exc:
            self._fail(type(exc).__name__)
            raise ProviderError(f"realtime send failed: {type(exc).__name__}") from exc

    # -- caller audio --------------------------------------------------------------------------

    def append(self, pcm16k: bytes) -> None:
        self._outgoing += resample(pcm16k, IN_RATE, RATE)
        if len(self._outgoing) >= APPEND_BYTES:
            self._wake.set()

    async def _send_audio(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        chunk, self._outgoing = bytes(self._outgoing), bytearray()
        with contextlib.suppress(ProviderError):
            if self._clear_first:
                self._clear_first = False
                await self._send({"type": "input_audio_buffer.clear"})
            if chunk:
                audio = base64.b64encode(chunk).decode()
                await self._send({"type": "input_audio_buffer.append", "audio": audio})

    def new_utterance(self) -> None:
        """Forget audio of an utterance that was never committed (a cough, a false start)."""
        self._outgoing.clear()
        self._clear_first = True

    async def commit(self) -> str:
        """End the caller's turn: commit the buffer, return its transcription ('' on failure)."""
        while not self._transcripts.empty():
            if self._transcripts.get_nowait() is _CLOSED:  # else a late answer of a past turn
                return ""
        self._awaiting_transcript = True
        try:
            await self._flush()
            await self._send({"type": "input_audio_buffer.commit"})
            heard = await asyncio.wait_for(self._transcripts.get(), self._timeout)
        except (ProviderError, TimeoutError) as exc:
            # Never raise here (the audio loop must live on); a dead link fails the reply.
            log.warning("realtime commit got no transcription (%s)", type(exc).__name__)
            return ""
        finally:
            self._awaiting_transcript = False
        return "" if heard is _CLOSED else str(heard)

    # -- responses -----------------------------------------------------------------------------

    async def respond(self, **options: Any) -> _Response:
        """Ask for a response and wait for all of it."""
        result = _Response()
        async for _chunk in self.stream(result, **options):
            pass
        return result

    async def stream(self, result: _Response, **options: Any) -> AsyncGenerator[bytes, None]:
        """Ask for a response and yield its audio as the model speaks it, filling ``result``.

        Closed early (the caller spoke over it), the response is cancelled and its end read,
        so the next response starts clean.
        """
        async with self._response_lock:
            while not self._events.empty():
                if self._events.get_nowait() is _CLOSED:
                    raise ProviderError(f"realtime connection is down ({self.failure})")
            await self._send({"type": "response.create", "response": options})
            done = False
            try:
                while not done:
                    event = await self._next_event()
                    kind = event.type
                    if kind == "response.output_item.added":
                        if getattr(event.item, "type", None) == "message":
                            result.message_id = getattr(event.item, "id", None)
                    elif kind == "response.output_audio.delta":
                        chunk = base64.b64decode(event.delta)
                        result.audio += chunk
                        yield chunk
                    elif kind == "response.output_audio_transcript.delta":
                        result.parts.append(event.delta)
                    elif kind == "response.output_audio_transcript.done":
                        result.transcript = str(event.transcript)
                    elif kind == "response.function_call_arguments.done":
                        result.calls.append((event.call_id, event.name, event.arguments))
                    elif kind == "error":
                        code = getattr(event.error, "code", None)
                        raise ProviderError(f"realtime error: {code}")
                    elif kind == "response.done":
                        done = True
                        status = getattr(event.response, "status", None)
                        if status in {"failed", "cancelled"}:
                            raise ProviderError(f"realtime response {status}")
            finally:
                if not done:
                    await self._cancel_response()

    async def _next_event(self) -> Any:
        try:
            event = await asyncio.wait_for(self._events.get(), self._timeout)
        except TimeoutError as exc:
            raise ProviderError("realtime response timed out") from exc
        if event is _CLOSED:
            raise ProviderError(f"realtime connection is down ({self.failure})")
        return event

    async def _cancel_response(self) -> None:
        """Stop the response in progress and read up to its end (bounded)."""
        with contextlib.suppress(ProviderError):
            await self._send({"type": "response.cancel"})
            while getattr(await self._next_event(), "type", None) != "response.done":
                pass

    async def say(self, text: str) -> bytes:
        """``text`` spoken by the model, out of band (not added to the conversation)."""
        result = await self.respond(
            conversation="none", output_modalities=["audio"], instructions=f"Say exactly: {text}"
        )
        return bytes(result.audio)

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """The caller heard only ``audio_end_ms`` of the item's audio: the server drops the
        rest, and its transcript, from the conversation."""
        await self._send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    async def function_output(self, call_id: str, output: str) -> None:
        await self._send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            }
        )


class RealtimeTranscriber:
    def __init__(self, link: RealtimeLink, on_close: Callable[[], object]) -> None:
        self._link = link
        self._on_close = on_close

    async def open(self) -> None:
        await self._link.open()

    def start_utterance(self) -> None:
        self._link.new_utterance()

    def feed(self, pcm: bytes) -> None:
        if self._link.failure is None:
            self._link.append(pcm)

    async def finish_utterance(self) -> str:
        return await self._link.commit()

    async def close(self) -> None:
        await self._link.close()
        self._on_close()


class RealtimeConversation:
    def __init__(self, link: RealtimeLink) -> None:
        self._link = link
        self._profile = link.context.profile
        # The message item the reply being played is speaking: (item id, where in the reply
        # its audio starts in ms, its response), for truncating it at a barge-in.
        self._playing: tuple[str, int, _Response] | None = None

    async def greeting(self) -> Reply:
        text = self._link.toolbox.greeting()
        return await self._streamed(Reply(text), instructions=f"Say exactly: {text}")

    async def interrupted(self, said: str, heard: str, played_ms: int) -> None:
        """Truncate the item the caller spoke over at what was played of it."""
        if self._link.failure is None and self._playing is not None:
            item, offset_ms, result = self._playing
            await self._link.truncate(item, max(0, min(played_ms - offset_ms, result.audio_ms)))

    async def respond(self, text: str) -> Reply:
        """Answer the committed turn; the reply streams once the model starts speaking.

        Function calls run as NATS tools first. When audio begins, the reply comes back at
        once with ``speech`` streaming the rest of the turn (a spoken step that also called
        tools carries on into the next response). A turn that never speaks (a hang-up
        straight after tools, an empty answer) is a plain reply, voiced by ``say``.
        """
        if self._link.failure is not None:
            raise ProviderError(f"realtime connection is down ({self._link.failure})")
        # The caller's audio is already in the conversation (committed); just answer it.
        return await self._streamed(Reply(""))

    async def _streamed(self, reply: Reply, **options: Any) -> Reply:
        self._playing = None
        turn = self._turn(reply, **options)
        try:
            first = await anext(turn)
        except StopAsyncIteration:
            return reply
        reply.speech, reply.speech_rate = prepended(first, turn), RATE
        return reply

    async def _turn(self, reply: Reply, **options: Any) -> AsyncGenerator[bytes, None]:
        link, spoken_ms = self._link, 0
        fallback = reply.text or self._profile.messages.didnt_catch
        words: list[str] = []
        for _ in range(MAX_TOOL_STEPS):
            result = _Response()
            async for chunk in link.stream(result, **options):
                if result.message_id is not None:
                    self._playing = (result.message_id, spoken_ms, result)
                reply.text = " ".join([*words, result.text])
                yield chunk
            options = {}
            if result.text:
                words.append(result.text)
            reply.text = " ".join(words)
            spoken_ms += result.audio_ms
            if not result.calls:
                reply.text = reply.text or fallback
                return
            hangup, farewell = False, None
            for call_id, name, arguments in result.calls:
                outcome = await link.toolbox.execute(name, arguments)
                await link.function_output(call_id, outcome.output)
                reply.intent = reply.intent or (name if name != END_CALL else None)
                if outcome.hangup:
                    hangup, farewell = True, outcome.farewell
            if hangup:
                goodbye = farewell or self._profile.messages.goodbye
                reply.hangup, reply.intent = True, reply.intent or "goodbye"
                if spoken_ms:  # already speaking: say goodbye in the same stream
                    audio = await link.say(goodbye)
                    reply.text = " ".join([*words, goodbye])
                    yield audio
                else:
                    reply.text = goodbye
                return
        raise ProviderError("the model kept calling tools")


class RealtimeVoice:
    """Lines the session voices itself ("are you still there?", a goodbye after tools):
    spoken by the model out of band, in the call's voice."""

    sample_rate = RATE

    def __init__(self, link: RealtimeLink) -> None:
        self._link = link

    async def synthesize(self, text: str) -> bytes:
        return await self._link.say(text)


class OpenAIRealtimeProvider:
    """``VOICEMESH_AGENT_PROVIDER=openai-realtime``: one Realtime connection per call."""

    name = "openai-realtime"

    def __init__(self, options: OpenAIOptions) -> None:
        self._options = options
        self._client = options.client()
        self.links: dict[str, RealtimeLink] = {}

    def _link(self, context: CallContext) -> RealtimeLink:
        link = self.links.get(context.call_id)
        if link is None:
            link = RealtimeLink(self._client, context, self._options)
            self.links[context.call_id] = link
        return link

    def transcriber(self, context: CallContext) -> RealtimeTranscriber:
        # The session closes the transcriber when the call ends: the link goes with it.
        return RealtimeTranscriber(
            self._link(context), lambda: self.links.pop(context.call_id, None)
        )

    def synthesizer(self, context: CallContext) -> RealtimeVoice:
        return RealtimeVoice(self._link(context))

    def conversation(self, context: CallContext) -> RealtimeConversation:
        return RealtimeConversation(self._link(context))

    async def close(self) -> None:
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()
        await self._client.close()
