"""Turn-taking with Silero VAD, Smart Turn v3 and the partial transcript.

Feed 20 ms frames of 16 kHz PCM to ``Endpointer.feed``; it reports, counting frames (so
decisions are exact under scheduling jitter):

- ``SPEECH_STARTED`` as soon as Silero hears two voiced windows (with the pre-roll frames);
- while the agent speaks, ``INTERRUPTION_CHECK`` after ``check_after_ms`` of speech: the
  caller decodes the partial transcript and asks ``classify_interruption``; a stop word
  ("wait", "no") stops the agent there. Otherwise the burst's end (``PAUSED``) decides on
  the whole burst's transcript: a backchannel ("uh-huh", "okay", "right") lets the agent go
  on (``discard()``), anything else stops it. ``BARGE_IN`` comes after
  ``backchannel_max_ms`` of speech, since no backchannel lasts that long;
- ``PAUSED`` after ``pause_ms`` of silence: the caller asks ``decide`` (Smart Turn on the
  turn's audio plus the transcript so far) and calls ``end_turn()`` when it says complete;
- ``TURN_ENDED`` when the silence reaches ``max_pause_ms`` (``undecided_pause_ms`` when
  ``decide`` found no sign either way), and
  ``DISCARDED`` for a burst shorter than ``min_utterance_ms`` (a click, a cough).

Smart Turn judges prosody. On eSpeak NG's synthetic voice it is unreliable (finished
sentences often score under 0.1), so the transcript decides first: a turn whose text ends
on a word that cannot end a sentence ("my number is", "at", "and") or trails off ("...")
is incomplete, whatever Smart Turn says.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import Enum

from voicemesh.agent.vad import SileroStream, SmartTurn, TurnPrediction

__all__ = [
    "BACKCHANNELS",
    "EndOfTurn",
    "EndpointEvent",
    "EndpointParams",
    "EndpointSignal",
    "Endpointer",
    "Interruption",
    "classify_interruption",
    "ends_incomplete",
    "is_backchannel",
]

FRAME_MS = 20
FRAME_BYTES = 640  # 20 ms of 16 kHz s16le

#: What a listener says to show they follow, not to take the turn.
BACKCHANNELS = frozenset(
    "uh huh uh-huh mhm mm hmm mm-hmm hm yeah yep yes okay ok right sure alright all got it i "
    "see oh ah uh um".split()
)
_BACKCHANNEL_MAX_WORDS = 3

#: First words of a partial transcript that mean "stop talking" even before the caller goes on.
STOP_WORDS = frozenset("wait stop no hold hang sorry excuse actually hey but what".split())

#: Words a finished sentence does not end on.
_DANGLING = frozenset(
    "a an the my your our his her their its this that these those is are was were am be "
    "and or but so because if than then to of for at on in with from by about into "
    "i i'm it's i'd we we're you you're".split()
)
_WORD = re.compile(r"[a-z0-9']+")


class Interruption(Enum):
    BACKCHANNEL = "backchannel"  # the agent goes on; the burst is discarded
    INTERRUPTION = "interruption"  # the agent stops; the burst starts the caller's turn
    UNDECIDED = "undecided"  # wait for the end of the burst or for BARGE_IN


class EndpointSignal(Enum):
    SPEECH_STARTED = "speech_started"
    INTERRUPTION_CHECK = "interruption_check"  # agent speaking: is this a backchannel?
    BARGE_IN = "barge_in"  # agent speaking: too long for a backchannel, stop the agent
    PAUSED = "paused"  # silence inside a turn: decide whether it is over
    TURN_ENDED = "turn_ended"
    DISCARDED = "discarded"


@dataclass
class EndpointEvent:
    signal: EndpointSignal
    frames: list[bytes] = field(default_factory=list)  # SPEECH_STARTED: the pre-roll
    voiced_ms: int = 0
    silence_ms: int = 0


@dataclass(frozen=True)
class EndpointParams:
    threshold: float = 0.5  # Silero probability of speech
    start_frames: int = 2  # voiced frames in a row that start an utterance
    pause_ms: int = 200  # silence before PAUSED
    max_pause_ms: int = 1600  # silence that ends a turn the transcript says is unfinished
    undecided_pause_ms: int = 700  # silence that ends a turn neither model called finished
    min_utterance_ms: int = 120
    check_after_ms: int = 200  # agent speaking: speech before INTERRUPTION_CHECK
    backchannel_max_ms: int = 900  # agent speaking: speech that is a barge-in regardless
    preroll_ms: int = 300


@dataclass(frozen=True)
class EndOfTurn:
    complete: bool
    reason: str  # "dangling" | "trailing" | "smart_turn" | "sentence" | "undecided"
    smart_turn: TurnPrediction | None


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("-", " "))


def is_backchannel(text: str) -> bool:
    """A short acknowledgement ("uh-huh", "okay", "right", "got it"): not an interruption.

    Empty text counts too: a burst Whisper heard no words in does not stop the agent.
    """
    words = _words(text)
    return len(words) <= _BACKCHANNEL_MAX_WORDS and all(w in BACKCHANNELS for w in words)


def classify_interruption(text: str, *, final: bool) -> Interruption:
    """What the caller's speech over the agent is.

    ``text``: the partial transcript at ``INTERRUPTION_CHECK`` (``final=False``), or the
    whole burst's at its end (``final=True``, the burst stayed under ``backchannel_max_ms``).
    A partial decides only for an interruption (a stop word first, or more words than any
    backchannel): a partial "okay" may go on as "okay, but I need Tuesday".
    """
    words = _words(text)
    if final:
        return Interruption.BACKCHANNEL if is_backchannel(text) else Interruption.INTERRUPTION
    if words and not is_backchannel(text):
        if words[0] in STOP_WORDS or len(words) > _BACKCHANNEL_MAX_WORDS:
            return Interruption.INTERRUPTION
    return Interruption.UNDECIDED


def ends_incomplete(text: str) -> str | None:
    """Why ``text`` cannot be a whole turn ("dangling" or "trailing"), or None."""
    stripped = text.strip()
    if stripped.endswith(("...", "\u2026", ",", "-")):
        return "trailing"
    words = _words(stripped)
    if words and words[-1] in _DANGLING:
        return "dangling"
    return None


class Endpointer:
    """One call's turn-taking: VAD per frame, end-of-turn judgement at each pause."""

    def __init__(
        self,
        vad: SileroStream,
        smart_turn: SmartTurn,
        params: EndpointParams | None = None,
    ) -> None:
        self._vad = vad
        self._smart_turn = smart_turn
        self.params = params or EndpointParams()
        self._preroll: deque[bytes] = deque(maxlen=self.params.preroll_ms // FRAME_MS)
        self._turn: list[bytes] = []  # the current turn's audio, pre-roll included
        self.in_speech = False
        self._voiced_run = 0
        self._voiced_ms = 0  # in the current burst (since the last pause)
        self._turn_voiced_ms = 0
        self._silence_ms = 0
        self._checked = False
        self._barged = False
        self._limit_ms = self.params.max_pause_ms  # the silence that ends this turn

    @property
    def audio(self) -> bytes:
        """The current turn's audio so far."""
        return b"".join(self._turn)

    def feed(self, frame: bytes, *, agent_speaking: bool = False) -> list[EndpointEvent]:
        voiced = self._vad.feed(frame) >= self.params.threshold
        if not self.in_speech:
            return self._idle(frame, voiced)
        self._turn.append(frame)
        events: list[EndpointEvent] = []
        if voiced:
            self._voiced_ms += FRAME_MS
            self._turn_voiced_ms += FRAME_MS
            self._silence_ms = 0
            if agent_speaking:
                events.extend(self._interruption())
            return events
        self._silence_ms += FRAME_MS
        if self._silence_ms == self.params.pause_ms:
            if self._turn_voiced_ms < self.params.min_utterance_ms:
                return [self.discard()]
            self._voiced_ms = 0  # the next burst gets its own interruption check
            self._checked = self._barged = False
            self._limit_ms = self.params.max_pause_ms  # until ``decide`` says otherwise
            events.append(self._event(EndpointSignal.PAUSED))
        elif self._silence_ms >= self._limit_ms:
            events.append(self.end_turn())
        return events

    def _idle(self, frame: bytes, voiced: bool) -> list[EndpointEvent]:
        self._preroll.append(frame)
        self._voiced_run = self._voiced_run + 1 if voiced else 0
        if self._voiced_run < self.params.start_frames:
            return []
        self.in_speech = True
        self._turn = list(self._preroll)
        self._preroll.clear()
        self._voiced_ms = self._turn_voiced_ms = self._voiced_run * FRAME_MS
        self._silence_ms = 0
        self._checked = self._barged = False
        self._limit_ms = self.params.max_pause_ms
        return [EndpointEvent(EndpointSignal.SPEECH_STARTED, list(self._turn), self._voiced_ms)]

    def _interruption(self) -> list[EndpointEvent]:
        if not self._checked and self._voiced_ms >= self.params.check_after_ms:
            self._checked = True
            return [self._event(EndpointSignal.INTERRUPTION_CHECK)]
        if not self._barged and self._voiced_ms >= self.params.backchannel_max_ms:
            self._barged = True
            return [self._event(EndpointSignal.BARGE_IN)]
        return []

    def _event(self, signal: EndpointSignal) -> EndpointEvent:
        return EndpointEvent(signal, voiced_ms=self._turn_voiced_ms, silence_ms=self._silence_ms)

    async def decide(self, transcript: str | Awaitable[str] = "") -> EndOfTurn:
        """At a pause: is the turn over? ``transcript``: what the recogniser heard so far, or
        the decode still running (Smart Turn then runs alongside it, not after it)."""
        if isinstance(transcript, str):
            text = transcript
            prediction = None
        else:
            prediction = asyncio.ensure_future(self._smart_turn.predict(self.audio))
            try:
                text = await transcript
            except BaseException:
                prediction.cancel()
                raise
        reason = ends_incomplete(text) if text else None
        if reason is not None:
            if prediction is not None:
                prediction.cancel()
            return EndOfTurn(False, reason, None)
        if prediction is None:
            return self._judge(text, await self._smart_turn.predict(self.audio))
        return self._judge(text, await prediction)

    def decide_blocking(self, transcript: str = "") -> EndOfTurn:
        reason = ends_incomplete(transcript) if transcript else None
        if reason is not None:
            return EndOfTurn(False, reason, None)
        return self._judge(transcript, self._smart_turn.predict_blocking(self.audio))

    def _judge(self, transcript: str, prediction: TurnPrediction) -> EndOfTurn:
        if prediction.complete:
            return EndOfTurn(True, "smart_turn", prediction)
        if transcript.strip().endswith((".", "?", "!")):
            return EndOfTurn(True, "sentence", prediction)
        # Neither says finished (a name, a number): end sooner than an unfinished sentence.
        self._limit_ms = min(self._limit_ms, self.params.undecided_pause_ms)
        return EndOfTurn(False, "undecided", prediction)

    def end_turn(self) -> EndpointEvent:
        """End the turn now (after a complete ``decide``, or at ``max_pause_ms``)."""
        event = self._event(EndpointSignal.TURN_ENDED)
        self._reset()
        return event

    def discard(self) -> EndpointEvent:
        """Drop the current turn (too short, or a backchannel while the agent spoke)."""
        event = self._event(EndpointSignal.DISCARDED)
        self._reset()
        return event

    def _reset(self) -> None:
        self.in_speech = False
        self._turn = []
        self._voiced_run = self._voiced_ms = self._turn_voiced_ms = self._silence_ms = 0
        self._checked = self._barged = False
