"""Turn-taking on real models (Silero VAD, Smart Turn v3, Whisper tiny.en) and eSpeak audio."""

from __future__ import annotations

import numpy as np
import pytest

from voicemesh.agent.endpoint import (
    FRAME_BYTES,
    FRAME_MS,
    Endpointer,
    EndpointSignal,
    Interruption,
    classify_interruption,
    ends_incomplete,
    is_backchannel,
)
from voicemesh.agent.stt import UtteranceTranscriber, WhisperRecognizer, shared_recognizer
from voicemesh.agent.vad import SileroStream, silero_vad, smart_turn
from voicemesh.common.runtime.speech import speak


def silence(ms: int) -> bytes:
    return bytes(FRAME_BYTES * (ms // FRAME_MS))


def frames(pcm: bytes) -> list[bytes]:
    pcm += bytes(-len(pcm) % FRAME_BYTES)
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def onset_ms(pcm: bytes) -> int:
    """Where the speech in ``pcm`` begins: the first 10 ms louder than -40 dBFS."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    blocks = samples[: len(samples) // 160 * 160].reshape(-1, 160)
    loud = np.sqrt((blocks**2).mean(axis=1)) > 328
    return int(np.argmax(loud)) * 10


@pytest.fixture(scope="module")
def recognizer() -> WhisperRecognizer:
    return shared_recognizer()


def endpointer() -> Endpointer:
    return Endpointer(SileroStream(silero_vad()), smart_turn())


async def caller_turns(pcm: bytes, recognizer: WhisperRecognizer) -> list[tuple[int, str]]:
    """Plays ``pcm`` as a caller, as the agent's session would: at each pause the segment
    is decoded and the end of turn decided. Returns (end time in ms, transcript) per turn."""
    detector, transcriber = endpointer(), UtteranceTranscriber(recognizer)
    turns: list[tuple[int, str]] = []
    for index, frame in enumerate(frames(pcm)):
        was_in_speech = detector.in_speech
        events = detector.feed(frame)
        if was_in_speech:
            transcriber.feed(frame)
        for event in events:
            for earlier in event.frames:  # SPEECH_STARTED: the pre-roll, this frame included
                transcriber.feed(earlier)
            if event.signal is EndpointSignal.PAUSED:
                transcriber.pause()
                verdict = await detector.decide(await transcriber.text_so_far())
                if verdict.complete:
                    events.append(detector.end_turn())
            if event.signal is EndpointSignal.TURN_ENDED:
                turns.append((index * FRAME_MS, (await transcriber.finish()).text))
                transcriber = UtteranceTranscriber(recognizer)
    return turns


async def test_a_pause_inside_a_sentence_does_not_end_the_turn(
    recognizer: WhisperRecognizer,
) -> None:
    first, rest = speak("my number is,"), speak("five five five, one two one two.")
    pcm = silence(400) + first + silence(700) + rest + silence(2000)
    turns = await caller_turns(pcm, recognizer)
    assert len(turns) == 1, turns
    ended_at, text = turns[0]
    assert ended_at > (len(silence(400) + first + silence(700) + rest)) // 32  # after it all
    assert "number" in text.lower() and text.count("5") + text.lower().count("five") >= 3


async def test_a_finished_sentence_ends_the_turn_well_before_the_longest_pause(
    recognizer: WhisperRecognizer,
) -> None:
    speech = speak("I would like to book a haircut on Wednesday.")
    turns = await caller_turns(silence(300) + speech + silence(2000), recognizer)
    assert len(turns) == 1, turns
    ended_at, text = turns[0]
    speech_end = (len(silence(300)) + len(speech)) // 32
    assert ended_at - speech_end < endpointer().params.max_pause_ms - 600
    assert "wednesday" in text.lower()


async def over_the_agent(said: str, recognizer: WhisperRecognizer) -> list[str]:
    """The caller says ``said`` while the agent speaks: what the session would decide."""
    detector = endpointer()
    decisions: list[str] = []
    for frame in frames(silence(300) + speak(said) + silence(1000)):
        for event in detector.feed(frame, agent_speaking=not decisions):
            signal = event.signal
            if signal is EndpointSignal.INTERRUPTION_CHECK or (
                signal is EndpointSignal.PAUSED and not decisions
            ):
                heard = (await recognizer.transcribe(detector.audio)).text
                final = signal is EndpointSignal.PAUSED
                kind = classify_interruption(heard, final=final)
                if kind is Interruption.BACKCHANNEL:
                    detector.discard()
                if kind is not Interruption.UNDECIDED:
                    decisions.append(f"{kind.value}:{signal.value}")
            elif signal is EndpointSignal.BARGE_IN and not decisions:
                decisions.append(f"interruption:{signal.value}")
    return decisions


@pytest.mark.parametrize("said", ["uh-huh.", "okay.", "right.", "yeah.", "got it."])
async def test_a_backchannel_while_the_agent_speaks_is_not_an_interruption(
    said: str, recognizer: WhisperRecognizer
) -> None:
    assert await over_the_agent(said, recognizer) == ["backchannel:paused"]


@pytest.mark.parametrize(
    ("said", "decided_at"),
    [
        ("wait, that is the wrong day.", "interruption_check"),
        ("no, no, stop.", "interruption_check"),
        ("I need it on Tuesday instead of Thursday.", ""),
    ],
)
async def test_real_speech_over_the_agent_is_an_interruption(
    said: str, decided_at: str, recognizer: WhisperRecognizer
) -> None:
    decisions = await over_the_agent(said, recognizer)
    assert len(decisions) == 1 and decisions[0].startswith("interruption:"), decisions
    assert decisions[0].endswith(decided_at)


def test_speech_onset_is_reported_within_300_ms_of_the_onset_in_the_audio() -> None:
    for said, agent_speaking in [("hello, I need help with my booking.", False),
                                 ("stop, I need to change the time.", True)]:  # fmt: skip
        pcm = silence(800) + speak(said) + silence(400)
        detector = endpointer()
        reported = None
        for index, frame in enumerate(frames(pcm)):
            events = detector.feed(frame, agent_speaking=agent_speaking)
            if reported is None and any(e.signal is EndpointSignal.SPEECH_STARTED for e in events):
                reported = (index + 1) * FRAME_MS
        assert reported is not None
        assert 0 <= reported - onset_ms(pcm) <= 300, (reported, onset_ms(pcm))


def test_a_click_is_discarded_and_silence_starts_nothing() -> None:
    detector = endpointer()
    click = (np.sin(np.arange(800) / 3.0) * 20000).astype(np.int16).tobytes()  # 50 ms
    signals = [
        e.signal for f in frames(silence(500) + click + silence(500)) for e in detector.feed(f)
    ]
    assert EndpointSignal.TURN_ENDED not in signals
    assert not detector.in_speech


def test_the_transcript_vetoes_an_end_of_turn() -> None:
    assert ends_incomplete("My number is...") == "trailing"
    assert ends_incomplete("I'd like to book it for") == "dangling"
    assert ends_incomplete("I'd like to book it for Tuesday.") is None
    assert is_backchannel("Uh-huh.") and is_backchannel("Okay, right.") and is_backchannel("")
    assert not is_backchannel("No, wait.") and not is_backchannel("Okay so I need to change it")
