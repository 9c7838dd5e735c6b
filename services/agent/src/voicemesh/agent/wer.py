"""Word error rate on normalised transcripts: "4 p.m." against "four pm" is no error."""

from __future__ import annotations

from collections.abc import Iterable

from voicemesh.agent.normalize import normalize

__all__ = ["word_error_rate", "word_errors"]


def _edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for row, ref_word in enumerate(reference, start=1):
        current = [row]
        for column, hyp_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[column] + 1,
                    current[column - 1] + 1,
                    previous[column - 1] + (ref_word != hyp_word),
                )
            )
        previous = current
    return previous[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, words in the reference), both normalised."""
    ref_words = normalize(reference).split()
    return _edit_distance(ref_words, normalize(hypothesis).split()), len(ref_words)


def word_error_rate(pairs: Iterable[tuple[str, str]]) -> float:
    """Errors over reference words, summed over (reference, hypothesis) pairs; 0.0 for none."""
    errors = words = 0
    for reference, hypothesis in pairs:
        pair_errors, pair_words = word_errors(reference, hypothesis)
        errors += pair_errors
        words += pair_words
    if words == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / words
