"""The Realtime API WebSocket (``/v1/realtime?model=...``), GA event names and shapes.

Event names follow the types of the installed ``openai`` package (``openai.types.realtime``:
``response.output_audio.delta``, ``response.output_audio_transcript.delta``,
``response.function_call_arguments.done``, ``response.done`` ...). Audio is PCM16 mono at
24 kHz in both directions (``audio/pcm``). The simulator does no voice activity detection of
its own: the client commits the input buffer (``turn_detection`` null), and every
``response.create`` is answered by ``script.answer`` over the conversation so far. A
``response.create`` whose ``instructions`` hold ``Say exactly: <text>`` speaks that text,
which is how a client has a fixed line (a greeting, a prompt) said in the session's voice.
Client mistakes are answered with an ``error`` event and the session goes on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from voicemesh.openaisim.app import BadRequest, SimState, error_body, function_names, text_of
from voicemesh.openaisim.script import Message, Text, ToolCall, answer

__all__ = ["RealtimeSession", "realtime_endpoint"]

RATE = 24000
#: Audio deltas of 100 ms: small enough to stream, few enough to keep the socket quiet.
DELTA_BYTES = RATE // 10 * 2
_SAY_EXACTLY = re.compile(r"say exactly:\s*(.+)", re.IGNORECASE | re.DOTALL)


@dataclass
class _Item:
    id: str
    type: str
    role: str = "user"
    text: str = ""
    call_id: str | None = None
    name: str | None = None
    audio_ms: int = 0  # of an assistant message: how long its audio is


@dataclass
class RealtimeSession:
    """One WebSocket's session: its configuration, input buffer and conversation."""

    ws: WebSocket
    sim: SimState
    model: str
    session: dict[str, Any] = field(default_factory=dict)
    buffer: bytearray = field(default_factory=bytearray)
    items: list[_Item] = field(default_factory=list)
    response: asyncio.Task[None] | None = None  # the response being produced, if any
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self) -> None:
        self.session = {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.sim.new_id("sess"),
            "model": self.model,
            "instructions": "",
            "tools": [],
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "alloy"},
            },
        }
        await self.send("session.created", session=self.session)
        try:
            await self._serve()
        finally:
            if self.response is not None:
                self.response.cancel()

    async def _serve(self) -> None:
        while True:
            raw = await self.ws.receive_text()
            event_id = None
            try:
                event = json.loads(raw)
                if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                    raise BadRequest("an event must be an object with a type", "type")
                event_id = event.get("event_id")
                await self.handle(event)
            except ValueError as exc:  # BadRequest and malformed JSON alike
                param = exc.param if isinstance(exc, BadRequest) else None
                error = error_body(str(exc), "invalid_request_error", "invalid_value", param)
                error["error"]["event_id"] = event_id
                await self.send("error", **error)

    async def send(self, kind: str, **fields: Any) -> None:
        async with self.sending:  # the response task and the reader both send
            await self.ws.send_text(
                json.dumps({"type": kind, "event_id": self.sim.new_id("event"), **fields})
            )

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        event_id = event.get("event_id")
        self.sim.counts[f"realtime:{kind}"] += 1
        if kind == "session.update":
            update = event.get("session")
            if not isinstance(update, dict):
                raise BadRequest("session must be an object", "session")
            function_names(update.get("tools"), nested=False)
            self.session.update({k: v for k, v in update.items() if k != "type"})
            await self.send("session.updated", session=self.session)
        elif kind == "input_audio_buffer.append":
            try:
                self.buffer += base64.b64decode(str(event.get("audio", "")), validate=True)
            except binascii.Error as exc:
                raise BadRequest("audio must be base64", "audio") from exc
        elif kind == "input_audio_buffer.clear":
            self.buffer.clear()
            await self.send("input_audio_buffer.cleared")
        elif kind == "input_audio_buffer.commit":
            await self._commit()
        elif kind == "conversation.item.create":
            await self._create_item(event.get("item"))
        elif kind == "response.create":
            options = event.get("response") or {}
            if not isinstance(options, dict):
                raise BadRequest("response must be an object", "response")
            if self.response is not None and not self.response.done():
                raise BadRequest("Conversation already has an active response", "response")
            # Produced alongside the reading of further events, as the API does: a
            # ``response.cancel`` can stop it part way.
            self.cancelled.clear()
            self.response = asyncio.create_task(self._respond_reporting(options, event_id))
        elif kind == "conversation.item.truncate":
            await self._truncate(event)
        elif kind == "response.cancel":
            if self.response is not None and not self.response.done():
                self.cancelled.set()
        else:
            raise BadRequest(f"unknown event type {kind!r}", "type")

    async def _truncate(self, event: dict[str, Any]) -> None:
        """Like OpenAI: cut an assistant message's audio at ``audio_end_ms`` and drop the
        transcript of what was cut, so later responses see only what was heard."""
        item = next((i for i in self.items if i.id == event.get("item_id")), None)
        if item is None or item.type != "message" or item.role != "assistant":
            raise BadRequest("item_id is not an assistant message in the conversation", "item_id")
        if event.get("content_index") != 0:
            raise BadRequest("content_index must be 0", "content_index")
        end = event.get("audio_end_ms")
        if not isinstance(end, int) or isinstance(end, bool) or not 0 <= end <= item.audio_ms:
            raise BadRequest(f"audio_end_ms must be within 0..{item.audio_ms}", "audio_end_ms")
        words = item.text.split()
        item.text = " ".join(
            words[: round(len(words) * end / item.audio_ms)] if item.audio_ms else words
        )
        item.audio_ms = end
        self.sim.truncations.append({"item_id": item.id, "audio_end_ms": end, "text": item.text})
        await self.send(
            "conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end
        )

    def _previous(self) -> str | None:
        return self.items[-1].id if self.items else None

    async def _commit(self) -> None:
        if len(self.buffer) < RATE // 10 * 2:
            raise BadRequest("buffer too small: expected at least 100ms of audio", "audio")
        pcm, self.buffer = bytes(self.buffer), bytearray()
        item = _Item(self.sim.new_id("item"), "message", "user")
        previous = self._previous()
        self.items.append(item)
        await self.send("input_audio_buffer.committed", item_id=item.id, previous_item_id=previous)
        shown: dict[str, Any] = {
            "id": item.id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.send("conversation.item.added", item=shown, previous_item_id=previous)
        item.text = await asyncio.to_thread(self.sim.recognizer.transcribe, pcm, RATE)
        seconds = len(pcm) / 2 / RATE
        await self.send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item.id,
            content_index=0,
            transcript=item.text,
            usage={"type": "duration", "seconds": round(seconds, 3)},
        )
        shown["content"] = [{"type": "input_audio", "transcript": item.text}]
        await self.send("conversation.item.done", item=shown, previous_item_id=previous)

    async def _create_item(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise BadRequest("item must be an object", "item")
        kind = raw.get("type")
        item_id = str(raw.get("id") or self.sim.new_id("item"))
        if kind == "message":
            role = raw.get("role")
            if role not in {"user", "system", "assistant"}:
                raise BadRequest(f"invalid role {role!r}", "item.role")
            item = _Item(item_id, "message", role, text_of(raw.get("content"), "item.content"))
        elif kind == "function_call_output":
            if not isinstance(raw.get("call_id"), str) or not isinstance(raw.get("output"), str):
                raise BadRequest("function_call_output needs call_id and output", "item")
            item = _Item(item_id, kind, "tool", raw["output"], call_id=raw["call_id"])
        else:
            raise BadRequest(f"item type {kind!r} is not supported", "item.type")
        previous = self._previous()
        self.items.append(item)
        shown = {**raw, "id": item_id, "object": "realtime.item", "status": "completed"}
        await self.send("conversation.item.added", item=shown, previous_item_id=previous)
        await self.send("conversation.item.done", item=shown, previous_item_id=previous)

    def _messages(self, extra_instructions: str) -> list[Message]:
        system = " ".join(
            filter(None, [str(self.session.get("instructions") or ""), extra_instructions])
        )
        messages = [Message("system", system)]
        for item in self.items:
            if item.type == "function_call_output":
                messages.append(Message("tool", item.text))
            elif item.type == "message":
                messages.append(Message(item.role, item.text))
        return messages

    async def _respond_reporting(self, options: dict[str, Any], event_id: Any) -> None:
        try:
            await self._respond(options)
        except BadRequest as exc:
            error = error_body(str(exc), "invalid_request_error", "invalid_value", exc.param)
            error["error"]["event_id"] = event_id
            await self.send("error", **error)
        except WebSocketDisconnect:
            return

    async def _respond(self, options: dict[str, Any]) -> None:
        instructions = str(options.get("instructions") or "")
        in_conversation = options.get("conversation", "auto") != "none"
        tools = function_names(options.get("tools", self.session.get("tools")), nested=False)
        said = _SAY_EXACTLY.search(instructions)
        reply = Text(said.group(1).strip()) if said else answer(self._messages(instructions), tools)
        response_id = self.sim.new_id("resp")
        response: dict[str, Any] = {
            "id": response_id,
            "object": "realtime.response",
            "status": "in_progress",
            "output": [],
            "output_modalities": ["audio"],
            "conversation_id": "conv_sim" if in_conversation else None,
        }
        await self.send("response.created", response=response)
        where = {"response_id": response_id, "output_index": 0}
        if isinstance(reply, ToolCall):
            item: dict[str, Any] = {"id": self.sim.new_id("item"), "object": "realtime.item",
                    "type": "function_call", "call_id": self.sim.new_id("call"),
                    "name": reply.name, "arguments": reply.arguments_json,
                    "status": "completed"}  # fmt: skip
            await self.send(
                "response.output_item.added",
                item={**item, "arguments": "", "status": "in_progress"},
                **where,
            )
            ids = {"item_id": item["id"], "call_id": item["call_id"]}
            await self.send(
                "response.function_call_arguments.delta", delta=reply.arguments_json, **ids, **where
            )
            await self.send(
                "response.function_call_arguments.done",
                name=reply.name,
                arguments=reply.arguments_json,
                **ids,
                **where,
            )
            await self.send("response.output_item.done", item=item, **where)
            if in_conversation:
                self.items.append(
                    _Item(
                        item["id"],
                        "function_call",
                        "assistant",
                        call_id=item["call_id"],
                        name=reply.name,
                    )
                )
        else:
            text = reply.text
            item = {"id": self.sim.new_id("item"), "object": "realtime.item", "type": "message",
                    "role": "assistant", "status": "completed",
                    "content": [{"type": "output_audio", "transcript": text}]}  # fmt: skip
            await self.send(
                "response.output_item.added",
                item={**item, "status": "in_progress", "content": []},
                **where,
            )
            part = {"item_id": item["id"], "content_index": 0, **where}
            await self.send(
                "response.content_part.added", part={"type": "audio", "transcript": ""}, **part
            )
            pcm = await asyncio.to_thread(self.sim.voice.speak, text, RATE)
            words = text.split(" ")
            chunks = [pcm[i : i + DELTA_BYTES] for i in range(0, len(pcm), DELTA_BYTES)] or [b""]
            loop = asyncio.get_running_loop()
            began, sent, spoken = loop.time(), 0, []
            for index, chunk in enumerate(chunks):
                if self.sim.voice_speed > 0:
                    due = began + index * DELTA_BYTES / 2 / RATE / self.sim.voice_speed
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.cancelled.wait(), due - loop.time())
                if self.cancelled.is_set():
                    break
                share = words[
                    index * len(words) // len(chunks) : (index + 1) * len(words) // len(chunks)
                ]
                if share:
                    spoken += share
                    await self.send(
                        "response.output_audio_transcript.delta",
                        delta=" ".join(share) + " ",
                        **part,
                    )
                await self.send(
                    "response.output_audio.delta", delta=base64.b64encode(chunk).decode(), **part
                )
                sent += len(chunk)
            if self.cancelled.is_set():  # the item keeps what was produced before the cancel
                pcm, text = pcm[:sent], " ".join(spoken)
                item["content"] = [{"type": "output_audio", "transcript": text}]
                item["status"] = "incomplete"
            await self.send("response.output_audio.done", **part)
            await self.send("response.output_audio_transcript.done", transcript=text, **part)
            await self.send(
                "response.content_part.done", part={"type": "audio", "transcript": text}, **part
            )
            await self.send("response.output_item.done", item=item, **where)
            if in_conversation:
                audio_ms = len(pcm) * 1000 // (2 * RATE)
                self.items.append(
                    _Item(item["id"], "message", "assistant", text, audio_ms=audio_ms)
                )
        status = "cancelled" if self.cancelled.is_set() else "completed"
        response.update(status=status, output=[item])
        await self.send("response.done", response=response)


async def realtime_endpoint(ws: WebSocket) -> None:
    sim: SimState = ws.app.state.sim
    if not sim.authorized(ws.headers.get("authorization")):
        body = error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        await ws.send_denial_response(JSONResponse(body, status_code=401))
        return
    model = ws.query_params.get("model")
    if not model:
        body = error_body("model is required", "invalid_request_error", None, "model")
        await ws.send_denial_response(JSONResponse(body, status_code=400))
        return
    await ws.accept()
    sim.counts["realtime"] += 1
    try:
        await RealtimeSession(ws, sim, model).run()
    except WebSocketDisconnect:
        return
