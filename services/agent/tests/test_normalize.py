"""Transcripts normalised for the dialog and for word error rate, with lines from the corpus."""

from __future__ import annotations

import pytest

from voicemesh.agent.normalize import fold, normalize, ordinal_suffix, words
from voicemesh.agent.wer import word_error_rate, word_errors
from voicemesh.testkit.corpus import load_corpus


@pytest.mark.parametrize(
    ("spoken", "written"),
    [
        # the same moment as a caller says it and as Whisper writes it
        ("Monday at four p.m.", "Monday at 4 PM"),
        ("four pm", "4 p.m."),
        ("four PM", "4pm"),
        ("Tomorrow at half past three?", "Tomorrow at 3:30?"),
        ("Five o'clock today.", "5 o'clock today"),
        ("five o'clock today", "5 today"),
        ("Like quarter past ten.", "Like 10:15."),
        ("quarter to ten", "9:45"),
        ("Monday at half two.", "Monday at 2:30."),
        ("Friday the eighteenth at ten fifteen.", "Friday the 18th at 10:15."),
        ("Monday the twenty-first at seven in the evening.", "Monday the 21st at 7 in the evening"),
        ("January fifth at eight thirty in the morning", "January 5th at 8.30 in the morning"),
        # phone and policy numbers said digit by digit, in groups, with "oh" and "double"
        ("six one seven, five five five, oh one four two.", "617-555-0142"),
        ("six one seven, five five five, oh one four two.", "(617) 555 0142"),
        ("Nine seven two, five five five, oh one double eight.", "972-555-0188"),
        ("The policy is three one, double eight, oh five.", "The policy is 318805."),
        ("Policy number one one four, triple seven.", "Policy number 114777."),
        ("My policy's, um, fifty-one, seventy-three, twenty-nine.", "My policy's 517329."),
        ("Seven eighty, two forty-one.", "780241"),
        ("The policy's six oh oh, one five nine.", "The policy's 600159."),
        # other numbers, case, punctuation, fillers and spelling
        ("Number twenty-six.", "number 26"),
        ("number five hundred and three", "Number 503"),
        ("Twenty twelve Marrowby Street.", "2012 Marrowby Street"),
        ("under six hundred thousand", "under $600,000"),
        ("Uh, yeah, I, I wanna book a, a blowout.", "Yeah, I, I wanna book a, a blowout."),
        ("Do you do colour?", "Do you do color?"),
        ("Couples counselling", "couples counseling"),
    ],
)
def test_spoken_and_written_forms_normalise_alike(spoken: str, written: str) -> None:
    assert normalize(spoken) == normalize(written)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Tomorrow at half past three?", ["tomorrow", "at", "3", "30"]),
        ("The fourteenth, in the morning", ["the", "14th", "in", "the", "morning"]),
        ("the twenty-second at noon", ["the", "22nd", "at", "noon"]),
        ("the first of December", ["the", "1st", "of", "december"]),
        ("First thing tomorrow", ["first", "thing", "tomorrow"]),
        ("four o'clock", ["4", "o'clock"]),
        ("five five five, oh one", ["5", "5", "5", "0", "1"]),
        ("Oh, it's Gwendolyn", ["oh", "it's", "gwendolyn"]),
        ("a hundred and twenty", ["120"]),
        ("It's 4.30 p.m.", ["it's", "4", "30", "pm"]),
    ],
)
def test_words_keep_what_the_dialog_reads(line: str, expected: list[str]) -> None:
    assert words(line) == expected


def test_fold_keeps_apostrophes_and_drops_punctuation() -> None:
    assert fold("I'm  dying to get this HAIRCUT!!") == "i'm dying to get this haircut"
    assert fold("That\u2019s right.") == "that's right"
    assert fold("Ferreira-Lund, P.M.") == "ferreira lund pm"


@pytest.mark.parametrize(
    ("number", "suffix"), [(1, "1st"), (2, "2nd"), (3, "3rd"), (11, "11th"), (22, "22nd")]
)
def test_ordinal_suffix(number: int, suffix: str) -> None:
    assert ordinal_suffix(number) == suffix


def test_word_errors_count_after_normalising() -> None:
    assert word_errors("Monday at four p.m.", "monday at 4 PM") == (0, 3 + 1)
    assert word_errors("book a haircut", "book haircut") == (1, 3)
    assert word_errors("book a haircut", "book a nice haircut") == (1, 3)
    assert word_errors("book a haircut", "cook a haircut") == (1, 3)
    assert word_errors("", "") == (0, 0)


def test_word_error_rate_sums_over_lines() -> None:
    pairs = [("yes please", "yes please"), ("tomorrow at three", "tomorrow at tree")]
    assert word_error_rate(pairs) == pytest.approx(1 / 5)
    assert word_error_rate([]) == 0.0
    assert word_error_rate([("", "something")]) == 1.0


def test_every_corpus_line_is_its_own_transcript() -> None:
    """A recogniser that writes each corpus line as the corpus does scores 0, and one that
    writes the line with its numbers as digits scores 0 too."""
    lines = [turn.say for call in load_corpus() for turn in call.turns]
    assert word_error_rate((line, line) for line in lines) == 0.0
    digits = [(line, " ".join(words(line))) for line in lines]
    assert word_error_rate(digits) == 0.0
