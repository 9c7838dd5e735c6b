"""Speech-to-text engines on the held-out caller corpus: latency per utterance, RTF, WER.

Each caller line of the corpus's held-out half (``--calls`` calls per vertical) is spoken
by eSpeak NG with its call's voice and rate, at 16 kHz, with 0.3 s of silence either side,
and decoded by:

- ``grammar``: pocketsphinx with the vertical's JSGF grammar (the agent's decoder today,
  ``voicemesh.agent.speech.DecoderPool``), the in-run baseline;
- ``whisper-30s``: Whisper tiny.en on faster-whisper's padded 30 s window;
- ``whisper``: the same model on the utterance's own window (``WhisperRecognizer``'s
  default: the utterance plus 5 s, at least 10 s);
- ``whisper+prompt``: the same, given the vertical's greeting as the text before the
  caller's (in the agent: what it just said);
- ``whisper-at-pause``: as the agent would run it, the decode starting when the caller
  pauses (``UtteranceTranscriber``): what is left at the end of the turn, and the end of
  turn itself (pause + decode, with Smart Turn alongside) counted from the end of the
  speech.

WER is on normalised transcripts (``voicemesh.agent.wer``: numbers, times, case and
punctuation). Prints a table, writes bench/results/stt_engines.json, with each model's
inference time per call. eSpeak's voice is not a caller's: these are upper bounds.

    uv run --frozen python bench/stt_engines.py [--calls 16]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from typing import Any

from _report import median, percentile, report

from voicemesh.agent.endpoint import Endpointer, EndpointParams
from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.agent.speech import DecoderPool, decode_blocking
from voicemesh.agent.stt import SAMPLE_RATE, UtteranceTranscriber, WhisperRecognizer
from voicemesh.agent.vad import SileroStream, silero_vad, smart_turn
from voicemesh.agent.wer import word_errors
from voicemesh.common.runtime.speech import speak
from voicemesh.testkit.corpus import load_corpus

PAD = bytes(SAMPLE_RATE * 2 * 3 // 10)
FRAME = 640


def utterances(calls_per_vertical: int) -> list[tuple[str, str, bytes]]:
    """(vertical, line, audio) for the held-out calls' caller lines."""
    taken: dict[str, int] = defaultdict(int)
    lines: list[tuple[str, str, bytes]] = []
    for call in load_corpus(split="heldout"):
        if taken[call.vertical] >= calls_per_vertical:
            continue
        taken[call.vertical] += 1
        for turn in call.turns:
            audio = speak(turn.say, voice=call.voice, rate=call.rate)
            lines.append((call.vertical, turn.say, PAD + audio + PAD))
    return lines


def grammar_engine(
    grammars: dict[str, str], lines: list[tuple[str, str, bytes]]
) -> list[tuple[str, float]]:
    pool = DecoderPool()
    heard = []
    for vertical, _, audio in lines:
        decoder = pool.acquire(vertical, grammars[vertical])
        started = time.perf_counter()
        text = decode_blocking(decoder, audio)
        heard.append((text, time.perf_counter() - started))
        pool.release(vertical, decoder)
    return heard


def whisper_engine(
    recognizer: WhisperRecognizer,
    lines: list[tuple[str, str, bytes]],
    greetings: dict[str, str] | None = None,
) -> list[tuple[str, float]]:
    """``greetings``: the vertical's greeting as Whisper's previous text (what the agent said)."""
    recognizer.transcribe_blocking(lines[0][2])  # the first decode allocates
    heard = []
    for vertical, _, audio in lines:
        context = greetings[vertical] if greetings else ""
        result = recognizer.transcribe_blocking(audio, context=context)
        heard.append((result.text, result.seconds))
    return heard


async def at_pause_engine(
    recognizer: WhisperRecognizer, lines: list[tuple[str, str, bytes]]
) -> tuple[list[tuple[str, float]], list[float]]:
    """(text, wait at the end of the turn) per line, and when the turn ended (s after the
    speech): at the first pause when judged complete, else when the silence ran out."""
    params = EndpointParams()
    heard, end_of_turn = [], []
    for _, _, audio in lines:
        transcriber = UtteranceTranscriber(recognizer)
        detector = Endpointer(SileroStream(silero_vad()), smart_turn())
        speech = audio[: -len(PAD)]
        for offset in range(0, len(speech), FRAME):
            transcriber.feed(speech[offset : offset + FRAME])
            detector.feed(speech[offset : offset + FRAME])
        started = time.perf_counter()
        transcriber.pause()  # pause_ms into the silence after the speech
        decision = await detector.decide(transcriber.text_so_far())
        decided = time.perf_counter() - started
        result = await transcriber.finish()
        heard.append((result.text, result.seconds))
        if decision.complete:
            end_of_turn.append(params.pause_ms / 1000 + decided)
        elif decision.reason == "undecided":  # ended by the silence
            end_of_turn.append(params.undecided_pause_ms / 1000)
        else:
            end_of_turn.append(params.max_pause_ms / 1000)
    return heard, end_of_turn


def row(
    name: str, lines: list[tuple[str, str, bytes]], heard: list[tuple[str, float]]
) -> list[Any]:
    errors = words = 0
    for (_, said, _), (text, _) in zip(lines, heard, strict=True):
        wrong, total = word_errors(said, text)
        errors, words = errors + wrong, words + total
    times = [seconds * 1000 for _, seconds in heard]
    audio_s = sum(len(audio) for _, _, audio in lines) / (SAMPLE_RATE * 2)
    rtf = sum(seconds for _, seconds in heard) / audio_s
    return [name, round(median(times), 1), round(percentile(times, 95), 1), round(rtf, 3),
            round(errors / words, 3)]  # fmt: skip


def model_timings(lines: list[tuple[str, str, bytes]]) -> dict[str, float]:
    """Milliseconds per call of Silero VAD (one 32 ms window) and Smart Turn (one turn)."""
    stream = SileroStream(silero_vad())
    for _, _, audio in lines[:20]:
        stream.feed(audio)
    turn = smart_turn()
    turn.predict_blocking(lines[0][2])
    turn_ms = [turn.predict_blocking(audio).seconds * 1000 for _, _, audio in lines[:20]]
    return {
        "silero_vad_ms_per_window": round(stream.inference_s * 1000 / stream.inferences, 3),
        "smart_turn_ms_p50": round(median(turn_ms), 1),
        "smart_turn_ms_p95": round(percentile(turn_ms, 95), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8, help="held-out calls per vertical")
    parser.add_argument("--cpu-threads", type=int, default=1)
    args = parser.parse_args()
    library = ProfileLibrary()
    grammars = {name: library.get(name).grammar() for name in library.names()}
    greetings = {name: str(library.get(name).greeting) for name in library.names()}
    lines = utterances(args.calls)
    windowed = WhisperRecognizer(cpu_threads=args.cpu_threads)
    full = WhisperRecognizer(cpu_threads=args.cpu_threads, margin_s=None)
    at_pause, end_of_turn = asyncio.run(at_pause_engine(windowed, lines))
    rows = [
        row("grammar", lines, grammar_engine(grammars, lines)),
        row("whisper-30s", lines, whisper_engine(full, lines)),
        row("whisper", lines, whisper_engine(windowed, lines)),
        row("whisper+prompt", lines, whisper_engine(windowed, lines, greetings)),
        row("whisper-at-pause", lines, at_pause),
    ]
    ended = [seconds * 1000 for seconds in end_of_turn]
    first_pause = [ms for ms in ended if ms < EndpointParams().undecided_pause_ms]
    extra = {
        "utterances": len(lines),
        "cpu_threads": args.cpu_threads,
        "models": model_timings(lines),
        "end_of_turn_ms_p50": round(median(ended), 1),
        "end_of_turn_ms_p95": round(percentile(ended, 95), 1),
        "ended_at_first_pause": round(len(first_pause) / len(lines), 3),
        "end_of_turn_at_first_pause_ms_p50": round(median(first_pause), 1),
        "end_of_turn_at_first_pause_ms_p95": round(percentile(first_pause, 95), 1),
        "note": "eSpeak NG voices, not people: upper bounds on accuracy",
    }
    report("stt_engines", ["engine", "p50 ms", "p95 ms", "RTF", "WER"], rows, extra)
    print(extra)


if __name__ == "__main__":
    main()
