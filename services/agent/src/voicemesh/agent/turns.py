"""Voice activity and end of turn: webrtcvad per 20 ms frame plus a hangover timer.

Counting frames rather than wall time keeps decisions exact under scheduling jitter: a turn
ends after ``end_of_turn_ms`` of unvoiced audio (or, when the caller has plainly finished,
earlier: ``PAUSED`` after ``early_end_ms`` lets the session ask whether what it heard is a
whole answer and ``end_turn`` ends it there), and barge-in fires only after
``barge_in_ms`` of voiced audio, so a cough (a short burst) neither interrupts the agent
nor becomes a turn (``min_utterance_ms``).

What the session answers travels as a ``Turn``: the greeting, a caller's turn, or the
silence watchdog's prompt and goodbye.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeAlias

import webrtcvad

from voicemesh.agent.profiles import TurnTiming

__all__ = [
    "CallerTurn",
    "Greeting",
    "SilenceGoodbye",
    "SilencePrompt",
    "Turn",
    "TurnDetector",
    "TurnEvent",
    "TurnSignal",
]

FRAME_MS = 20
PREROLL_MS = 300


class TurnSignal(Enum):
    SPEECH_STARTED = "speech_started"
    BARGE_IN = "barge_in"
    TURN_ENDED = "turn_ended"
    PAUSED = "paused"  # early_end_ms of silence inside an utterance: the turn may be over
    DISCARDED = "discarded"


@dataclass
class TurnEvent:
    signal: TurnSignal
    #: for SPEECH_STARTED: the pre-roll frames that belong to the utterance
    frames: list[bytes] = field(default_factory=list)
    voiced_ms: int = 0


@dataclass(frozen=True)
class Greeting:
    """The call has just connected: the agent speaks first."""


@dataclass(frozen=True)
class CallerTurn:
    """The caller finished speaking."""

    text: str
    speech_ended_at: float  # monotonic time of the last voiced frame
    stt_ms: float  # the recogniser's wait at the end of the turn
    end_of_turn_wait_ms: float  # the silence waited to decide the turn had ended


@dataclass(frozen=True)
class SilencePrompt:
    """The caller has been quiet for ``silence_prompt_s``: ask whether they are there."""


@dataclass(frozen=True)
class SilenceGoodbye:
    """Still nothing ``silence_hangup_s`` after the prompt: say goodbye and hang up."""


Turn: TypeAlias = Greeting | CallerTurn | SilencePrompt | SilenceGoodbye


class TurnDetector:
    """Feed 20 ms frames of 16 kHz PCM; get start, barge-in and end-of-turn signals."""

    def __init__(self, timing: TurnTiming, sample_rate: int = 16000) -> None:
        self._vad = webrtcvad.Vad(timing.vad_mode)
        self._rate = sample_rate
        self._timing = timing
        self._preroll: deque[bytes] = deque(maxlen=PREROLL_MS // FRAME_MS)
        self.in_speech = False
        self._voiced_run = 0
        self._voiced_total = 0
        self._silence = 0
        self._frames = 0
        self._barged = False

    def is_speech(self, pcm: bytes) -> bool:
        return bool(self._vad.is_speech(pcm, self._rate))

    def feed(self, pcm: bytes, *, agent_speaking: bool) -> list[TurnEvent]:
        voiced = self.is_speech(pcm)
        events: list[TurnEvent] = []
        if not self.in_speech:
            self._preroll.append(pcm)
            if not voiced:
                self._voiced_run = 0
                return events
            self._voiced_run += 1
            # Two voiced frames in a row start an utterance; one is usually a click.
            if self._voiced_run < 2:
                return events
            self.in_speech = True
            self._voiced_total = self._voiced_run * FRAME_MS
            self._silence = 0
            self._frames = len(self._preroll)
            self._barged = False
            events.append(TurnEvent(TurnSignal.SPEECH_STARTED, frames=list(self._preroll)))
            self._preroll.clear()
            return events
        self._frames += 1
        if voiced:
            self._voiced_run += 1
            self._voiced_total += FRAME_MS
            self._silence = 0
        else:
            self._voiced_run = 0
            self._silence += FRAME_MS
        if (
            agent_speaking
            and not self._barged
            and voiced
            and self._voiced_total >= self._timing.barge_in_ms
        ):
            self._barged = True
            events.append(TurnEvent(TurnSignal.BARGE_IN, voiced_ms=self._voiced_total))
        too_long = self._frames * FRAME_MS >= self._timing.max_turn_s * 1000
        if self._silence >= self._timing.end_of_turn_ms or too_long:
            events.append(self.end_turn())
        elif (
            self._silence - FRAME_MS < self._timing.early_end_ms <= self._silence
            and 0 < self._timing.early_end_ms < self._timing.end_of_turn_ms
            and self._voiced_total >= self._timing.min_utterance_ms
        ):
            events.append(TurnEvent(TurnSignal.PAUSED, voiced_ms=self._voiced_total))
        return events

    def end_turn(self) -> TurnEvent:
        """End the utterance now: ``TURN_ENDED``, or ``DISCARDED`` when it was too short."""
        self.in_speech = False
        self._voiced_run = 0
        signal = (
            TurnSignal.TURN_ENDED
            if self._voiced_total >= self._timing.min_utterance_ms
            else TurnSignal.DISCARDED
        )
        return TurnEvent(signal, voiced_ms=self._voiced_total)

    @property
    def silence_ms(self) -> int:
        """Unvoiced audio since the caller last spoke, within the current utterance."""
        return self._silence
