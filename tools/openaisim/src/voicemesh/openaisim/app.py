"""The HTTP side of the simulator: chat completions, transcription and speech, OpenAI-shaped.

Every ``/v1`` route needs ``Authorization: Bearer <key>`` with a key the simulator was
started with (401 otherwise) and answers malformed bodies with 400, both in OpenAI's error
shape (``{"error": {"message", "type", "param", "code"}}``) so the official ``openai``
package raises its own ``AuthenticationError`` / ``BadRequestError``.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import functools
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from voicemesh.openaisim.script import Message, ToolCall, answer
from voicemesh.openaisim.voice import AudioError, Recognizer, Voice, pcm_from_wav, wav_from_pcm

__all__ = ["BadRequest", "SimState", "create_app", "error_body"]

SPEECH_RATE = 24000  # OpenAI's "pcm" speech format: 24 kHz s16le mono
MAX_UPLOAD_BYTES = 25 * 1024 * 1024


class BadRequest(ValueError):
    """A request body the simulator rejects with 400, and why."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class SimState:
    """What the running simulator holds: its keys, ears, voice and request counts."""

    api_keys: frozenset[str]
    recognizer: Recognizer
    voice: Voice = field(default_factory=Voice)
    counts: Counter[str] = field(default_factory=Counter)
    ids: itertools.count[int] = field(default_factory=itertools.count)
    #: the messages of the latest chat request, as sent: tests read what a client keeps
    last_chat: list[Any] = field(default_factory=list)
    #: every Realtime ``conversation.item.truncate`` done: item id, audio_end_ms, text kept
    truncations: list[dict[str, Any]] = field(default_factory=list)
    #: how fast voices are produced, in multiples of real time: 0 at once; 1.0 spaces a
    #: Realtime response's 100 ms deltas 100 ms apart, as a model speaking live, and has
    #: ``/v1/audio/speech`` take as long as the speech lasts
    voice_speed: float = 0.0

    def authorized(self, header: str | None) -> bool:
        scheme, _, key = (header or "").partition(" ")
        return scheme.lower() == "bearer" and key.strip() in self.api_keys

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}{uuid.uuid4().hex[:12]}"


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _unauthorized() -> JSONResponse:
    return JSONResponse(
        error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        status_code=401,
    )


def _bad_request(exc: BadRequest) -> JSONResponse:
    return JSONResponse(
        error_body(str(exc), "invalid_request_error", None, exc.param), status_code=400
    )


def _openai_route(
    handler: Callable[[Request, SimState], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """A ``/v1`` endpoint: 401 without a known key, 400 for a ``BadRequest`` it raises."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        state: SimState = request.app.state.sim
        if not state.authorized(request.headers.get("authorization")):
            return _unauthorized()
        try:
            return await handler(request, state)
        except BadRequest as exc:
            return _bad_request(exc)

    return endpoint


def text_of(content: Any, param: str) -> str:
    """Message content as text: a string, or a list of ``{"type": "text", "text": ...}``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise BadRequest("content parts must be objects", param)
            if isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part.get("transcript"), str):
                parts.append(part["transcript"])
        return " ".join(parts)
    raise BadRequest("content must be a string or a list of parts", param)


def chat_messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty array", "messages")
    messages = []
    for index, item in enumerate(raw):
        param = f"messages[{index}]"
        if not isinstance(item, dict):
            raise BadRequest("each message must be an object", param)
        role = item.get("role")
        if role not in {"system", "developer", "user", "assistant", "tool"}:
            raise BadRequest(f"invalid role {role!r}", f"{param}.role")
        if role == "tool" and not isinstance(item.get("tool_call_id"), str):
            raise BadRequest("a tool message needs tool_call_id", f"{param}.tool_call_id")
        role = "system" if role == "developer" else role
        messages.append(Message(role, text_of(item.get("content"), f"{param}.content")))
    return messages


def function_names(raw: Any, *, nested: bool) -> list[str]:
    """Names of the offered functions (chat: ``{"function": {...}}``; Realtime: flat)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("tools must be an array", "tools")
    names = []
    for index, tool in enumerate(raw):
        spec = tool.get("function") if nested and isinstance(tool, dict) else tool
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise BadRequest("each tool needs a function name", f"tools[{index}]")
        names.append(spec["name"])
    return names


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


@_openai_route
async def chat_completions(request: Request, state: SimState) -> Response:
    body = await _json_body(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required", "model")
    messages = chat_messages(body.get("messages"))
    tools = function_names(body.get("tools"), nested=True)
    state.counts["chat"] += 1
    state.last_chat = list(body["messages"])
    reply = answer(messages, tools)
    completion_id = state.new_id("chatcmpl")
    created = int(time.time())
    if isinstance(reply, ToolCall):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": state.new_id("call"),
                    "type": "function",
                    "function": {"name": reply.name, "arguments": reply.arguments_json},
                }
            ],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": reply.text}
        finish = "stop"
    if body.get("stream"):
        chunks = _chunks(completion_id, created, model, message, finish)
        return StreamingResponse(chunks, media_type="text/event-stream")
    words = sum(len(m.content.split()) for m in messages)
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
            "usage": {"prompt_tokens": words, "completion_tokens": 8, "total_tokens": words + 8},
        }
    )


async def _chunks(
    completion_id: str, created: int, model: str, message: dict[str, Any], finish: str
) -> AsyncIterator[bytes]:
    """The completion as server-sent ``chat.completion.chunk`` events, then ``[DONE]``."""

    def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    yield event({"role": "assistant", "content": ""})
    if message.get("tool_calls"):
        call = message["tool_calls"][0]
        yield event({"tool_calls": [{"index": 0, **call, "function": {**call["function"]}}]})
    else:
        for word in str(message["content"]).split(" "):
            yield event({"content": word + " "})
            await asyncio.sleep(0)
    yield event({}, finish)
    yield b"data: [DONE]\n\n"


def _form_parts(content_type: str, body: bytes) -> dict[str, tuple[bytes, str | None]]:
    """multipart/form-data fields: name -> (bytes, filename)."""
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest("the body must be multipart/form-data")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if not message.is_multipart():
        raise BadRequest("the multipart body cannot be read")
    fields: dict[str, tuple[bytes, str | None]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (payload if isinstance(payload, bytes) else b"", part.get_filename())
    return fields


@_openai_route
async def transcriptions(request: Request, state: SimState) -> Response:
    body = await request.body()
    if len(body) > MAX_UPLOAD_BYTES:
        raise BadRequest("the file is larger than 25 MB", "file")
    fields = _form_parts(request.headers.get("content-type", ""), body)
    if "file" not in fields:
        raise BadRequest("file is required", "file")
    if not fields.get("model", (b"", None))[0]:
        raise BadRequest("model is required", "model")
    response_format = fields.get("response_format", (b"json", None))[0].decode()
    if response_format not in {"json", "text", "verbose_json"}:
        raise BadRequest(f"response_format {response_format!r} is not supported", "response_format")
    try:
        pcm, rate = pcm_from_wav(fields["file"][0])
    except AudioError as exc:
        raise BadRequest(str(exc), "file") from exc
    state.counts["transcriptions"] += 1
    text = await asyncio.to_thread(state.recognizer.transcribe, pcm, rate)
    if response_format == "text":
        return PlainTextResponse(text)
    duration = len(pcm) / 2 / rate
    if response_format == "verbose_json":
        return JSONResponse(
            {"task": "transcribe", "language": "english", "duration": duration, "text": text}
        )
    return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": round(duration)}})


@_openai_route
async def speech(request: Request, state: SimState) -> Response:
    body = await _json_body(request)
    text, voice, model = body.get("input"), body.get("voice"), body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required", "model")
    if not isinstance(text, str) or not text.strip() or len(text) > 4096:
        raise BadRequest("input must be 1 to 4096 characters", "input")
    if not isinstance(voice, str | dict):
        raise BadRequest("voice is required", "voice")
    response_format = body.get("response_format", "mp3")
    if response_format not in {"pcm", "wav"}:
        raise BadRequest(
            f"response_format {response_format!r} is not supported here (use pcm or wav)",
            "response_format",
        )
    speed = body.get("speed", 1.0)
    if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        raise BadRequest("speed must be between 0.25 and 4.0", "speed")
    state.counts["speech"] += 1
    pcm = await asyncio.to_thread(
        state.voice.speak, text, SPEECH_RATE, rate=int(175 * float(speed))
    )
    if state.voice_speed > 0:  # a voice model takes time in proportion to what it says
        await asyncio.sleep(len(pcm) / 2 / SPEECH_RATE / state.voice_speed)
    if response_format == "wav":
        return Response(wav_from_pcm(pcm, SPEECH_RATE), media_type="audio/wav")
    return Response(pcm, media_type="audio/pcm")


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def stats(request: Request) -> Response:
    """How many requests of each kind were served: tests read it to see a path was used."""
    state: SimState = request.app.state.sim
    return JSONResponse(dict(state.counts))


async def last_chat(request: Request) -> Response:
    """The messages of the latest chat request, as the client sent them."""
    state: SimState = request.app.state.sim
    return JSONResponse({"messages": state.last_chat})


async def truncations(request: Request) -> Response:
    """Every Realtime item truncated, with what was kept of its transcript."""
    state: SimState = request.app.state.sim
    return JSONResponse({"truncations": state.truncations})


def create_app(
    api_keys: list[str], phrases: list[str] | None = None, *, voice_speed: float = 0.0
) -> Starlette:
    from voicemesh.openaisim.realtime import realtime_endpoint

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/sim/stats", stats),
            Route("/sim/last-chat", last_chat),
            Route("/sim/truncations", truncations),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/audio/speech", speech, methods=["POST"]),
            WebSocketRoute("/v1/realtime", realtime_endpoint),
        ]
    )
    app.state.sim = SimState(frozenset(api_keys), Recognizer(phrases), voice_speed=voice_speed)
    return app
