"""Offline speech recognition accuracy: each vertical's grammar against the general model.

Every caller line of every profile's demo script is synthesised with eSpeak NG (16 kHz),
padded with 0.3 s of silence, and recognised by pocketsphinx twice: with the vertical's JSGF
grammar (what the agent uses) and with the general US English language model (the
baseline). Prints word error rate, exact-utterance rate and decode time per vertical; writes
bench/results/agent_stt_accuracy.json. eSpeak speech is far easier than a human voice: these
figures are an upper bound on real callers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pocketsphinx import Decoder

from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.agent.speech import DECODER_CONFIG, decode_blocking, speak

PAD = bytes(9600)


def word_errors(reference: str, hypothesis: str) -> int:
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def measure(decoder: Decoder, lines: list[tuple[str, bytes]]) -> dict[str, float]:
    errors = words = exact = 0
    started = time.perf_counter()
    for text, pcm in lines:
        heard = decode_blocking(decoder, pcm)
        errors += word_errors(text, heard)
        words += len(text.split())
        exact += heard == text
    return {
        "wer": errors / words,
        "exact": exact / len(lines),
        "decode_s": time.perf_counter() - started,
        "audio_s": sum(len(p) for _, p in lines) / 32000,
    }


def main() -> None:
    library = ProfileLibrary()
    general = Decoder(**DECODER_CONFIG)
    rows: list[dict[str, Any]] = []
    for name in library.names():
        profile = library.get(name)
        lines = [(s.say, PAD + speak(s.say) + PAD) for s in profile.demo_script]
        grammar = Decoder(**DECODER_CONFIG)
        grammar.add_jsgf_string(name, profile.grammar())
        grammar.activate_search(name)
        rows.append({"vertical": name, "grammar": measure(grammar, lines),
                     "general_lm": measure(general, lines)})  # fmt: skip
    total_words = sum(
        len(s.say.split()) for n in library.names() for s in library.get(n).demo_script
    )
    overall = {
        key: sum(r[key]["wer"] * _words(library, r["vertical"]) for r in rows) / total_words
        for key in ("grammar", "general_lm")
    }
    print(f"{'vertical':<18} {'WER grammar':>12} {'WER general':>12} {'exact gr.':>10} "
          f"{'RTF grammar':>12} {'RTF general':>12}")  # fmt: skip
    for r in rows:
        g, b = r["grammar"], r["general_lm"]
        rtf_g, rtf_b = g["decode_s"] / g["audio_s"], b["decode_s"] / b["audio_s"]
        print(f"{r['vertical']:<18} {g['wer']:>12.3f} {b['wer']:>12.3f} {g['exact']:>10.2f} "
              f"{rtf_g:>12.3f} {rtf_b:>12.3f}")  # fmt: skip
    print(f"{'all':<18} {overall['grammar']:>12.3f} {overall['general_lm']:>12.3f}")
    out = Path(__file__).parent / "results" / "agent_stt_accuracy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"wer": overall["grammar"], "wer_general_lm": overall["general_lm"],
                               "verticals": rows}, indent=2))  # fmt: skip


def _words(library: ProfileLibrary, name: str) -> int:
    return sum(len(s.say.split()) for s in library.get(name).demo_script)


if __name__ == "__main__":
    main()
