"""The caller corpus's outcome figures for ``bench/voice.py``.

``text_figures`` plays every corpus call to the offline dialog as transcripts (the caller's
written lines, safety screening first, tools on the bench's NATS) and scores the held-out
half: that is the dialog's own figure, with no recogniser in the way, and its keys say so
(``*_text``). ``audio_figures`` is where the audio run goes: each call spoken with its
eSpeak voice and rate, clean and at 10 dB SNR, through the open-speech recogniser; until
that recogniser is in the agent it returns ``None`` and the JSON's audio keys are null.
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NatsClient

from voicemesh.agent.dialog import OfflineConversation
from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.testkit.corpus import CorpusFigures, figures, load_corpus, run_call


async def text_figures(nc: NatsClient, library: ProfileLibrary) -> dict[str, Any]:
    runs = [
        await run_call(nc, call, OfflineConversation, profiles=library) for call in load_corpus()
    ]
    heldout: CorpusFigures = figures([r for r in runs if r.call.split == "heldout"])
    every = figures(runs)
    return {
        "outcome_accuracy_text": heldout.accuracy,
        "outcome_by_vertical_text": heldout.per_vertical,
        "crisis_recall_text": every.crisis_recall,
        "false_alarm_rate_text": every.false_alarm_rate,
        "repeated_prompt_calls_text": every.loops,
    }


async def audio_figures(nc: NatsClient, library: ProfileLibrary) -> dict[str, Any] | None:
    """The corpus spoken through the recogniser, clean and at 10 dB SNR: ``outcome_accuracy``,
    ``outcome_accuracy_10db`` and ``crisis_recall``. ``None`` while the agent has no
    open-speech recogniser (the grammar one cannot hear these callers)."""
    return None


async def corpus_report(nc: NatsClient, library: ProfileLibrary) -> dict[str, Any]:
    """The keys ``bench/voice.py`` adds to its JSON."""
    text = await text_figures(nc, library)
    audio = await audio_figures(nc, library) or {
        "outcome_accuracy": None,
        "outcome_accuracy_10db": None,
        "crisis_recall": None,
    }
    return {**audio, **text}
