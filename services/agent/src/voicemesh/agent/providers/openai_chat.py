"""The ``openai`` provider: OpenAI transcription, chat with tool calls, and speech.

Reached only through the official ``openai`` package with a configurable ``base_url`` (the
tests point it at ``voicemesh.openaisim``). Each caller turn is one WAV upload to
``audio.transcriptions``, then chat completions until the model answers in words (its
function calls run as NATS tools, see ``openai_tools``), then ``audio.speech`` as 24 kHz
PCM. Every vendor error becomes ``ProviderError`` at this boundary; the call session turns
a failed turn into the spoken apology and hand-off, and a failed voice into the offline
voice, so a dropped connection is never silence.
"""

from __future__ import annotations

import io
import logging
import wave
from collections.abc import Callable
from typing import Any

import openai
from openai import AsyncOpenAI

from voicemesh.agent.providers.base import CallContext, ProviderError, Reply
from voicemesh.agent.providers.openai_tools import END_CALL, MAX_TOOL_STEPS, ToolBox

__all__ = [
    "OpenAIChatConversation",
    "OpenAIProvider",
    "OpenAISpeech",
    "OpenAITranscriber",
    "openai_client",
    "wav",
]

log = logging.getLogger(__name__)

#: Ends an agent line in the history when the caller spoke over the rest of it.
CUT_OFF = " [interrupted by the caller]"

SPEECH_RATE = 24000  # the "pcm" speech format is 24 kHz s16le mono
IN_RATE = 16000


def openai_client(api_key: str, base_url: str | None, timeout_s: float) -> AsyncOpenAI:
    """One client per provider; no retries: the call session has its own deadline."""
    return AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)


def wav(pcm: bytes, sample_rate: int) -> bytes:
    """``pcm`` (s16le mono) as a WAV file, the upload format every transcription model reads."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buffer.getvalue()


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
                model=self._model, file=("turn.wav", wav(pcm, IN_RATE), "audio/wav")
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
        if self._turn.failure is not None:
            failure, self._turn.failure = self._turn.failure, None
            raise ProviderError(f"transcription failed: {failure}")
        if not text.strip():
            return Reply(self._ctx.profile.messages.didnt_catch)
        self.messages.append({"role": "user", "content": text})
        for _ in range(MAX_TOOL_STEPS):
            message = await self._complete()
            calls = message.tool_calls or []
            if not calls:
                content = (message.content or "").strip()
                self.messages.append({"role": "assistant", "content": content})
                return Reply(content or self._ctx.profile.messages.didnt_catch)
            self.messages.append(message.model_dump(exclude_none=True))
            hangup, farewell, intent = False, None, None
            for call in calls:
                function = getattr(call, "function", None)
                if function is None:  # a custom (non-function) tool call: not offered
                    continue
                outcome = await self.toolbox.execute(function.name, function.arguments)
                self.messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": outcome.output}
                )
                intent = intent or (function.name if function.name != END_CALL else None)
                if outcome.hangup:
                    hangup, farewell = True, outcome.farewell
            if hangup:
                goodbye = farewell or self._ctx.profile.messages.goodbye
                return Reply(goodbye, hangup=True, intent=intent or "goodbye")
        raise ProviderError("the model kept calling tools")

    async def _complete(self) -> Any:
        try:
            completion = await self._client.chat.completions.create(
                model=self._model,
                messages=self.messages,  # type: ignore[arg-type]  # plain dicts, as sent
                tools=self.toolbox.chat_tools(),  # type: ignore[arg-type]
            )
        except openai.OpenAIError as exc:
            raise ProviderError(f"chat failed: {type(exc).__name__}") from exc
        if not completion.choices:
            raise ProviderError("chat answered no choices")
        return completion.choices[0].message


class OpenAIProvider:
    """``VOICEMESH_AGENT_PROVIDER=openai``: transcription, chat with tools, speech."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        chat_model: str,
        transcribe_model: str,
        speech_model: str,
        voice: str,
        timeout_s: float,
    ) -> None:
        self._client = openai_client(api_key, base_url, timeout_s)
        self._chat_model = chat_model
        self._transcribe_model = transcribe_model
        self._speech_model = speech_model
        self._voice = voice
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
            self._transcribe_model,
            self._turn(context),
            on_close=lambda: self._forget(context.call_id),
        )

    def synthesizer(self, context: CallContext) -> OpenAISpeech:
        return OpenAISpeech(self._client, self._speech_model, self._voice)

    def conversation(self, context: CallContext) -> OpenAIChatConversation:
        return OpenAIChatConversation(self._client, self._chat_model, context, self._turn(context))

    async def close(self) -> None:
        await self._client.close()
