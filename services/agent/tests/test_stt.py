"""Open-speech recognition: the packaged Whisper tiny.en on eSpeak NG audio, nothing downloaded.

eSpeak's voice is far easier than a person's on a phone line and far harder than a clean
recording in some words (names, "haircut"). Transcripts are compared normalised
(``voicemesh.agent.normalize``: case, punctuation, numbers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from voicemesh.agent.normalize import normalize
from voicemesh.agent.stt import (
    UtteranceTranscriber,
    WhisperRecognizer,
    default_model_path,
    shared_recognizer,
)
from voicemesh.agent.wer import word_error_rate
from voicemesh.common.runtime.speech import speak

SENTENCES = [
    "I don't want to live anymore",
    "can you tell me about the apartment on Maple Street",
    "I would like to speak to a real person",
    "is the house still available",
    "what time do you open on Saturday",
    "please book me a table for two tonight",
    "the kitchen sink is leaking again",
    "I have been feeling really hopeless lately",
]
PAD = bytes(9600)  # 0.3 s of silence either side, as the turn detector's pre-roll gives


def words(text: str) -> list[str]:
    return normalize(text).split()


def wer(recognizer: WhisperRecognizer) -> float:
    return word_error_rate(
        (sentence, recognizer.transcribe_blocking(PAD + speak(sentence) + PAD).text)
        for sentence in SENTENCES
    )


@pytest.fixture(scope="module")
def recognizer() -> WhisperRecognizer:
    return shared_recognizer()


def test_word_error_rate_on_sentences_no_grammar_contains(recognizer: WhisperRecognizer) -> None:
    assert wer(recognizer) <= 0.25  # 0.21 measured: eSpeak says "hopeless lately" unclearly


def test_the_short_window_costs_no_accuracy_against_whisper_s_30_s_window(
    recognizer: WhisperRecognizer,
) -> None:
    full_window = WhisperRecognizer(margin_s=None)
    assert wer(recognizer) <= wer(full_window) + 0.05


async def test_a_crisis_statement_is_heard_word_for_word(recognizer: WhisperRecognizer) -> None:
    heard = await recognizer.transcribe(PAD + speak("I don't want to live anymore") + PAD)
    assert words(heard.text) == words("I don't want to live anymore")
    assert 0.5 < heard.confidence <= 1.0
    assert not heard.full_window


async def test_silence_is_no_text(recognizer: WhisperRecognizer) -> None:
    heard = await recognizer.transcribe(bytes(32000 * 2))
    assert heard.text == "" and heard.confidence == 0.0


async def test_a_turn_decoded_at_its_pause_needs_no_decode_at_its_end(
    recognizer: WhisperRecognizer,
) -> None:
    transcriber = UtteranceTranscriber(recognizer)
    pcm = PAD + speak("I would like to speak to a real person")
    for offset in range(0, len(pcm), 640):
        transcriber.feed(pcm[offset : offset + 640])
    transcriber.feed(bytes(6400), voiced=False)
    transcriber.pause()
    assert "person" in await transcriber.text_so_far()
    transcriber.feed(bytes(6400), voiced=False)
    finished = await transcriber.finish()
    assert words(finished.text) == words("I would like to speak to a real person")
    assert finished.seconds < 0.01  # the pause's decode, reused


def test_any_local_ctranslate2_whisper_directory_replaces_the_packaged_model(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "whisper"
    copy.mkdir()
    for item in default_model_path().iterdir():
        (copy / item.name).symlink_to(item)
    said = "I would like to speak to a real person"
    heard = WhisperRecognizer(copy).transcribe_blocking(PAD + speak(said))
    assert words(heard.text) == words(said)
    with pytest.raises(FileNotFoundError, match="no CTranslate2 Whisper model"):
        WhisperRecognizer(tmp_path / "missing").load()


def test_nothing_is_downloaded_and_pipecat_is_never_imported(tmp_path: Path) -> None:
    """A fresh process, every socket refused and an empty Hugging Face cache, runs all models."""
    script = textwrap.dedent(
        """
        import socket, sys

        def refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = refuse
        socket.create_connection = refuse

        from voicemesh.agent.endpoint import Endpointer
        from voicemesh.agent.stt import WhisperRecognizer
        from voicemesh.agent.vad import SileroStream, silero_vad, smart_turn
        from voicemesh.common.runtime.speech import speak

        pcm = bytes(9600) + speak("I would like to speak to a real person") + bytes(16000)
        print(WhisperRecognizer().transcribe_blocking(pcm).text)
        detector = Endpointer(SileroStream(silero_vad()), smart_turn())
        frames = [pcm[i : i + 640] for i in range(0, len(pcm), 640)]
        signals = [e.signal.value for frame in frames for e in detector.feed(frame)]
        print(signals, detector.decide_blocking().smart_turn is not None)
        print(sorted(m for m in sys.modules if m.split(".")[0] == "pipecat"))
        """
    )
    cache = tmp_path / "hf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    text, signals, pipecat_modules = done.stdout.strip().splitlines()
    assert words(text) == words("I would like to speak to a real person")
    assert "'speech_started'" in signals and "'paused'" in signals and signals.endswith("True")
    assert pipecat_modules == "[]"
    assert not cache.exists() or not any(cache.rglob("*"))
