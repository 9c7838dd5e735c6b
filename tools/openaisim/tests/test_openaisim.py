"""The simulator, driven by the official ``openai`` package as its only client.

The server runs as its own process (``python -m voicemesh.openaisim``), once for the
module: it loads eSpeak NG, whose C library allows one user per process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from voicemesh.openaisim.script import Message, Text, ToolCall, answer
from voicemesh.openaisim.voice import wav_from_pcm
from voicemesh.testkit.embedded import free_port
from voicemesh.testkit.fixtures import ProcessTracker, ServiceProcess

KEY = "sk-test-openaisim"
BOOKING = "i would like to book a haircut tomorrow at three p m for mary jones"
PHRASES = [BOOKING, "no that's all thank you goodbye"]
SYSTEM = "You answer calls. The current local time is 2026-11-24T10:00:00-05:00 (America/New_York)."
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "calendar_book",
            "parameters": {"type": "object", "properties": {"start": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("openaisim")
    phrases = root / "phrases.txt"
    phrases.write_text("\n".join(PHRASES))
    tracker = ProcessTracker(root)
    port = free_port()
    argv = [sys.executable, "-m", "voicemesh.openaisim", "--port", str(port)]
    process = tracker.command(
        [*argv, "--api-key", KEY, "--phrases", str(phrases)], {}, name="openaisim"
    )
    process.http_port = port
    try:
        asyncio.run(process.wait_healthy(timeout=20))
        yield process
    finally:
        tracker.kill_all()


@pytest.fixture
async def client(sim: ServiceProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        api_key=KEY, base_url=f"http://127.0.0.1:{sim.http_port}/v1", max_retries=0
    ) as client:
        yield client


def test_the_script_books_with_the_offset_of_the_named_zone() -> None:
    reply = answer([Message("system", SYSTEM), Message("user", BOOKING)], ["calendar_book"])
    assert isinstance(reply, ToolCall)
    assert reply.arguments["start"] == "2026-11-25T15:00:00-05:00"
    assert reply.arguments["name"] == "Mary Jones"
    # Without a time it asks; after a tool result it confirms in words.
    asks = answer([Message("system", SYSTEM), Message("user", "book me in")], ["calendar_book"])
    assert asks == Text("What day and time would you like?")
    done = json.dumps({"ok": True, "result": {"appointment": {"start": reply.arguments["start"]}}})
    confirmed = answer([Message("system", SYSTEM), Message("tool", done)], ["calendar_book"])
    assert isinstance(confirmed, Text) and "Wednesday, November 25 at 3 PM" in confirmed.text


async def test_chat_completion_with_a_tool_call_then_a_confirmation(client: AsyncOpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": BOOKING},
    ]
    first = await client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "calendar_book"
    assert json.loads(call.function.arguments)["start"] == "2026-11-25T15:00:00-05:00"
    messages.append(choice.message.model_dump(exclude_none=True))
    result = {"ok": True, "result": {"appointment": {"start": "2026-11-25T15:00:00-05:00"}}}
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    second = await client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert "You're all set" in (second.choices[0].message.content or "")


async def test_streamed_chat_completion(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}],
        stream=True,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text.strip() == "I heard: hello. How can I help you today?"


async def test_wrong_key_is_401_and_malformed_bodies_are_400(
    sim: ServiceProcess, client: AsyncOpenAI
) -> None:
    base = f"http://127.0.0.1:{sim.http_port}/v1"
    async with AsyncOpenAI(api_key="sk-wrong", base_url=base, max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="m", messages=[])
    assert bad.value.param == "messages"
    with pytest.raises(openai.BadRequestError):
        await client.audio.transcriptions.create(model="m", file=("x.wav", b"not a wav"))
    async with httpx.AsyncClient() as http:
        headers = {"Authorization": f"Bearer {KEY}"}
        broken = await http.post(f"{base}/chat/completions", content=b"{", headers=headers)
        assert broken.status_code == 400 and "error" in broken.json()
        unauthenticated = await http.post(f"{base}/audio/speech", json={})
        assert unauthenticated.status_code == 401


async def test_speech_then_transcription_round_trip(client: AsyncOpenAI) -> None:
    speech = await client.audio.speech.create(
        model="tts", voice="alloy", input=BOOKING, response_format="pcm"
    )
    pcm = speech.content
    assert len(pcm) > 24000 * 2  # more than a second of 24 kHz speech
    transcript = await client.audio.transcriptions.create(
        model="stt", file=("turn.wav", wav_from_pcm(pcm, 24000), "audio/wav")
    )
    assert transcript.text == BOOKING


async def test_realtime_function_call_then_spoken_confirmation(client: AsyncOpenAI) -> None:
    # The caller's voice comes from the simulator too: eSpeak allows one user per process.
    speech = await client.audio.speech.create(
        model="tts", voice="alloy", input=BOOKING, response_format="pcm"
    )
    caller = speech.content
    async with client.realtime.connect(model="gpt-realtime") as conn:
        assert (await conn.recv()).type == "session.created"
        tools = [{"type": "function", "name": "calendar_book", "parameters": {"type": "object"}}]
        await conn.session.update(
            session={"type": "realtime", "instructions": SYSTEM, "tools": tools}  # type: ignore[typeddict-item]
        )
        assert (await conn.recv()).type == "session.updated"
        for offset in range(0, len(caller), 4800):
            chunk = base64.b64encode(caller[offset : offset + 4800]).decode()
            await conn.input_audio_buffer.append(audio=chunk)
        await conn.input_audio_buffer.commit()
        events = [await conn.recv() for _ in range(4)]
        heard = [
            e for e in events if e.type == "conversation.item.input_audio_transcription.completed"
        ]
        assert heard and heard[0].transcript == BOOKING
        await conn.response.create()
        call = None
        async for event in conn:
            if event.type == "response.function_call_arguments.done":
                call = event
            if event.type == "response.done":
                break
        assert call is not None and call.name == "calendar_book"
        assert json.loads(call.arguments)["start"] == "2026-11-25T15:00:00-05:00"
        output = {"ok": True, "result": {"appointment": {"start": "2026-11-25T15:00:00-05:00"}}}
        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": json.dumps(output),
            }
        )
        await conn.response.create()
        audio, transcript, reply_item = bytearray(), "", ""
        async for event in conn:
            if event.type == "response.output_item.added":
                reply_item = event.item.id or ""
            elif event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
            elif event.type == "response.output_audio_transcript.done":
                transcript = event.transcript
            elif event.type == "response.done":
                assert event.response.status == "completed"
                break
        assert transcript.startswith("You're all set for Wednesday, November 25 at 3 PM")
        assert len(audio) > 24000 * 2
        # A bad event is answered with an error event; the session goes on.
        await conn.send({"type": "no.such.event"})  # type: ignore[arg-type]
        error = await conn.recv()
        assert error.type == "error" and "no.such.event" in error.error.message
        # Truncating: the caller's item or audio past the end is refused; the reply's
        # item is cut where asked.
        caller_item = heard[0].item_id
        assert reply_item and caller_item
        audio_ms = len(audio) * 1000 // (2 * 24000)
        for item_id, end in ((caller_item, 0), (reply_item, audio_ms + 1)):
            await conn.conversation.item.truncate(
                item_id=item_id, content_index=0, audio_end_ms=end
            )
            error = await conn.recv()
            assert error.type == "error", error
        await conn.conversation.item.truncate(item_id=reply_item, content_index=0, audio_end_ms=500)
        truncated = await conn.recv()
        assert truncated.type == "conversation.item.truncated" and truncated.audio_end_ms == 500


async def test_realtime_refuses_a_wrong_key(sim: ServiceProcess) -> None:
    base = f"http://127.0.0.1:{sim.http_port}/v1"
    async with AsyncOpenAI(api_key="sk-wrong", base_url=base, max_retries=0) as wrong:
        with pytest.raises(Exception, match="401"):
            async with wrong.realtime.connect(model="gpt-realtime"):
                pass


@pytest.fixture
async def live_client(processes: ProcessTracker) -> AsyncIterator[AsyncOpenAI]:
    """A simulator whose voices come in real time (``--voice-speed 1``)."""
    port = free_port()
    argv = [sys.executable, "-m", "voicemesh.openaisim", "--port", str(port)]
    process = processes.command(
        [*argv, "--api-key", KEY, "--voice-speed", "1"], {}, name="openaisim-live"
    )
    process.http_port = port
    await process.wait_healthy(timeout=20)
    async with AsyncOpenAI(
        api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0
    ) as client:
        yield client


async def test_realtime_response_in_progress_can_be_cancelled(live_client: AsyncOpenAI) -> None:
    line = "Thank you for calling Bella Salon, we are open every day but Sunday from nine to six."
    async with live_client.realtime.connect(model="gpt-realtime") as conn:
        assert (await conn.recv()).type == "session.created"
        await conn.response.create(response={"instructions": f"Say exactly: {line}"})
        audio, item_id = bytearray(), ""
        async for event in conn:
            if event.type == "response.output_item.added":
                item_id = event.item.id or ""
            elif event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
                if len(audio) >= 24000 * 2 // 2:  # half a second of a ~5 s line
                    break
        # Produced in real time: a second response must wait, a cancel stops this one.
        await conn.response.create()
        error = await conn.recv()
        assert error.type == "error" and "active response" in error.error.message, error
        await conn.response.cancel()
        said = ""
        async for event in conn:
            if event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
            elif event.type == "response.output_audio_transcript.done":
                said = event.transcript
            elif event.type == "response.done":
                assert event.response.status == "cancelled", event.response
                break
        audio_ms = len(audio) * 1000 // (2 * 24000)
        assert 500 <= audio_ms < 3000, audio_ms
        assert said and line.startswith(said) and len(said) < len(line), said
        # The item keeps only the audio sent before the cancel: truncating past it is refused.
        await conn.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=audio_ms + 200
        )
        assert (await conn.recv()).type == "error"
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=300)
        assert (await conn.recv()).type == "conversation.item.truncated"
