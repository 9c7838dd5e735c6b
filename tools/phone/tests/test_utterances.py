"""Where the phone finds the agent's words in what it heard."""

from __future__ import annotations

from voicemesh.phone.phone import VOICE_RMS, last_word_at, utterances

LOUD, QUIET = VOICE_RMS * 4, VOICE_RMS / 4


def _frames(start: float, seconds: float, rms: float) -> list[tuple[float, float]]:
    return [(start + i * 0.02, rms) for i in range(round(seconds / 0.02))]


def test_pauses_split_runs_and_shorter_gaps_do_not() -> None:
    heard = (
        _frames(0.0, 0.02, LOUD)  # a click at the start
        + _frames(0.02, 1.5, QUIET)
        + _frames(1.52, 0.8, LOUD)  # the greeting's first phrase
        + _frames(2.32, 0.3, QUIET)  # a comma
        + _frames(2.62, 0.6, LOUD)
        + _frames(3.22, 1.2, QUIET)
        + _frames(4.42, 0.4, LOUD)
    )
    runs = utterances(heard, gap_s=1.0)
    assert [(round(a, 2), round(b, 2)) for a, b in runs] == [
        (0.0, 0.0),
        (1.52, 3.2),
        (4.42, 4.8),
    ]
    assert len(utterances(heard, gap_s=0.2)) == 4


def test_silence_has_no_utterances() -> None:
    assert utterances(_frames(0.0, 2.0, QUIET), gap_s=0.6) == []


def test_a_click_after_the_last_words_is_not_voice() -> None:
    words = _frames(1.0, 0.5, LOUD)
    assert last_word_at(words) == words[-1][0]
    click = _frames(2.0, 0.04, LOUD)
    assert last_word_at(words + _frames(1.5, 0.5, QUIET) + click) == words[-1][0]
    assert last_word_at(click) is None
    assert last_word_at(_frames(0.0, 1.0, QUIET)) is None
    # Words with short pauses inside are one run; the click alone never counts.
    said = _frames(0.0, 0.06, LOUD) + _frames(0.06, 0.1, QUIET) + _frames(0.16, 0.06, LOUD)
    assert last_word_at(said) == said[-1][0]
