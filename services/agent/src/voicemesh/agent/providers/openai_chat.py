"""The ``openai`` provider: OpenAI transcription, chat with tool calls, and speech.

Reached only through the official ``openai`` package with a configurable ``base_url`` (the
tests point it at ``voicemesh.openaisim``). Each caller turn is one WAV upload to
``audio.transcriptions``, then streamed chat completions until the model answers in words
(its function calls run as NATS tools, see ``openai_tools``); the answer goes to the
session a sentence at a time as it is written, and each sentence to ``audio.speech`` as
24 kHz PCM. Every vendor error becomes ``ProviderError`` at this boundary; the call session turns
a failed turn into the spoken apology and hand-off, and a failed voice into the offline
voice, so a dropped connection is never silence.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from voicemesh.agent.providers.base import CallContext, ProviderError, Reply, prepended
from voicemesh.agent.providers.openai_tools import END_CALL, MAX_TOOL_STEPS, ToolBox
from voicemesh.agent.speech import IN_RATE
from voicemesh.common.runtime.speech import wav_from_pcm

__all__ = [
    "OpenAIChatConversation",
    "OpenAIOptions",
    "OpenAIProvider",
    "OpenAISpeech",
    "OpenAITranscriber",
]

log = logging.getLogger(__name__)

#: Ends an agent line in the history when the caller spoke over the rest of it.
CUT_OFF = " [interrupted by the caller]"

#: Where a sentence ends in text being written: ., ! or ? and then a space.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

SPEECH_RATE = 24000  # the "pcm" speech format is 24 kHz s16le mono


@dataclass(frozen=True, kw_only=True)
class OpenAIOptions:
    """How both OpenAI providers reach the API, and the models and voice they use."""

    api_key: str = field(repr=False)
    base_url: str | None
    chat_model: str
    realtime_model: str
    transcribe_model: str
    speech_model: str
    voice: str
    timeout_s: float

    def client(self) -> AsyncOpenAI:
        """One client per provider; no retries: the call session has its own deadline."""
        return AsyncOpenAI(
            api_key=self.api_key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0
        )


class _Turn:
    """What one call's transcriber tells its conversation: the last transcription failed."""

    def __init__(self) -> None:
        self.failure: str | None = None


class OpenAITranscriber:
    """Buffers the caller's utterance and uploads it as a WAV at the end of the turn."""

    def __init__(
        self,
        client: AsyncOpenAI,
        model: str,
        turn: _Turn,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._model = model
        self._turn = turn
        self._on_close = on_close
        self._pcm = bytearray()

    async def open(self) -> None:
        return None

    def start_utterance(self) -> None:
        self._pcm.clear()

    def feed(self, pcm: bytes) -> None:
        self._pcm += pcm

    async def finish_utterance(self) -> str:
        pcm, self._pcm = bytes(self._pcm), bytearray()
        if not pcm:
            return ""
        try:
            transcript = await self._client.audio.transcriptions.create(
                model=self._model, file=("turn.wav", wav_from_pcm(pcm, IN_RATE), "audio/wav")
            )
        except openai.OpenAIError as exc:
            # Never raise here (the audio loop must live on): the conversation raises for it.
            log.warning("transcription failed: %s", type(exc).__name__)
            self._turn.failure = type(exc).__name__
            return ""
        return str(transcript.text)

    async def close(self) -> None:
        self._pcm.clear()
        if self._on_close is not None:
            self._on_close()


class OpenAISpeech:
    sample_rate = SPEECH_RATE

    def __init__(self, client: AsyncOpenAI, model: str, voice: str) -> None:
        self._client = client
        self._model = model
        self._voice = voice

    async def synthesize(self, text: str) -> bytes:
        try:
            response = await self._client.audio.speech.create(
                model=self._model, voice=self._voice, input=text, response_format="pcm"
            )
        except openai.OpenAIError as exc:
            raise ProviderError(f"speech failed: {type(exc).__name__}") from exc
        return response.content


class OpenAIChatConversation:
    """The call's chat history; each caller turn runs the model until it answers in words."""

    def __init__(self, client: AsyncOpenAI, model: str, context: CallContext, turn: _Turn) -> None:
        self._client = client
        self._model = model
        self._ctx = context
        self._turn = turn
        self.toolbox = ToolBox(context)
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": self.toolbox.instructions()}
        ]

    async def greeting(self) -> Reply:
        text = self.toolbox.greeting()
        self.messages.append({"role": "assistant", "content": text})
        return Reply(text)

    async def interrupted(self, said: str, heard: str, played_ms: int) -> None:
        """The caller cut ``said`` short after ``heard``: the history keeps only what they
        heard, marked as cut off, so the model does not build on the rest."""
        for message in reversed(self.messages):
            if message.get("role") == "assistant" and message.get("content") == said:
                message["content"] = f"{heard}{CUT_OFF}" if heard else CUT_OFF.strip()
                return

    async def respond(self, text: str) -> Reply:
        """Run the model on the caller's turn; once it writes words, the reply streams.

        The completion streams: function calls run as NATS tools first; when the model
        writes, the reply comes back with its first sentence and ``sentences`` carries the
        rest as they are written. A turn that says nothing (a hang-up straight after tools,
        an empty answer) is a plain reply.
        """
        if self._turn.failure is not None:
            failure, self._turn.failure = self._turn.failure, None
            raise ProviderError(f"transcription failed: {failure}")
        if not text.strip():
            return Reply(self._ctx.profile.messages.didnt_catch)
        self.messages.append({"role": "user", "content": text})
        reply = Reply("")
        lines = self._lines(reply)
        try:
            first = await anext(lines)
        except StopAsyncIteration:
            return reply
        reply.sentences = prepended(first, lines)
        return reply

    async def _lines(self, reply: Reply) -> AsyncGenerator[str, None]:
        """The turn's sentences as the model writes them; ``reply`` is final at the end."""
        said: list[str] = []
        kept = 0  # how many of the sentences said are in the history
        try:
            for _ in range(MAX_TOOL_STEPS):
                written = ""
                calls: dict[int, dict[str, str]] = {}
                async for delta in self._stream():
                    if delta.content:
                        written += delta.content
                        *whole, written = _SENTENCE_END.split(written)
                        for sentence in filter(None, (w.strip() for w in whole)):
                            said.append(sentence)
                            reply.text = " ".join(said)
                            yield sentence
                    for call in delta.tool_calls or []:
                        slot = calls.setdefault(call.index, {"id": "", "name": "", "args": ""})
                        slot["id"] = call.id or slot["id"]
                        if call.function is not None:
                            slot["name"] += call.function.name or ""
                            slot["args"] += call.function.arguments or ""
                if written.strip():
                    said.append(written.strip())
                    reply.text = " ".join(said)
                    yield written.strip()
                if not calls:
                    self.messages.append({"role": "assistant", "content": " ".join(said[kept:])})
                    kept = len(said)
                    reply.text = reply.text or self._ctx.profile.messages.didnt_catch
                    return
                self.messages.append(
                    {
                        "role": "assistant",
                        "content": " ".join(said[kept:]) or None,
                        "tool_calls": [
                            {
                                "id": c["id"],
                                "type": "function",
                                "function": {"name": c["name"], "arguments": c["args"]},
                            }
                            for c in calls.values()
                        ],
                    }
                )
                kept = len(said)
                hangup, farewell = False, None
                for call in calls.values():
                    outcome = await self.toolbox.execute(call["name"], call["args"])
                    self.messages.append(
                        {"role": "tool", "tool_call_id": call["id"], "content": outcome.output}
                    )
                    if call["name"] != END_CALL:
                        reply.intent = reply.intent or call["name"]
                    if outcome.hangup:
                        hangup, farewell = True, outcome.farewell
                if hangup:
                    goodbye = farewell or self._ctx.profile.messages.goodbye
                    reply.hangup, reply.intent = True, reply.intent or "goodbye"
                    reply.text = " ".join([*said, goodbye])
                    if said:  # already speaking: say goodbye in the same stream
                        yield goodbye
                    return
            raise ProviderError("the model kept calling tools")
        finally:
            if len(said) > kept:  # cut off part way: the history has what was written
                self.messages.append({"role": "assistant", "content": " ".join(said[kept:])})

    async def _stream(self) -> AsyncGenerator[Any, None]:
        """The choice deltas of one streamed completion over the history."""
        try:
            stream = cast(
                "AsyncStream[ChatCompletionChunk]",
                await self._client.chat.completions.create(
                    model=self._model,
                    messages=self.messages,  # type: ignore[arg-type]  # plain dicts, as sent
                    tools=self.toolbox.chat_tools(),  # type: ignore[arg-type]
                    stream=True,
                ),
            )
        except openai.OpenAIError as exc:
            raise ProviderError(f"chat failed: {type(exc).__name__}") from exc
        try:
            async for chunk in stream:
                if chunk.choices:
                    yield chunk.choices[0].delta
        except openai.OpenAIError as exc:
            raise ProviderError(f"chat failed: {type(exc).__name__}") from exc
        finally:
            await stream.close()


class OpenAIProvider:
    """``VOICEMESH_AGENT_PROVIDER=openai``: transcription, chat with tools, speech."""

    name = "openai"

    def __init__(self, options: OpenAIOptions) -> None:
        self._options = options
        self._client = options.client()
        # Transcriber and conversation of one call share a _Turn; the session makes the
        # transcriber first, so it creates it and the conversation picks it up.
        self._turns: dict[str, _Turn] = {}

    def _turn(self, context: CallContext) -> _Turn:
        return self._turns.setdefault(context.call_id, _Turn())

    def _forget(self, call_id: str) -> None:
        self._turns.pop(call_id, None)

    def transcriber(self, context: CallContext) -> OpenAITranscriber:
        # The session closes the transcriber when the call ends: forget the call then.
        return OpenAITranscriber(
            self._client,
            self._options.transcribe_model,
            self._turn(context),
            on_close=lambda: self._forget(context.call_id),
        )

    def synthesizer(self, context: CallContext) -> OpenAISpeech:
        return OpenAISpeech(self._client, self._options.speech_model, self._options.voice)

    def conversation(self, context: CallContext) -> OpenAIChatConversation:
        return OpenAIChatConversation(
            self._client, self._options.chat_model, context, self._turn(context)
        )

    async def close(self) -> None:
        await self._client.close()
