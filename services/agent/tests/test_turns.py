"""End of turn: the full wait, and the short pause at which the session may end it early."""

from __future__ import annotations

from voicemesh.agent.profiles import TurnTiming
from voicemesh.agent.speech import speak
from voicemesh.agent.turns import FRAME_MS, TurnDetector, TurnSignal

FRAME = 640  # 20 ms at 16 kHz


def _signals(detector: TurnDetector, pcm: bytes) -> list[tuple[int, TurnSignal]]:
    """(silence in ms when it came, signal) for every event while feeding ``pcm``."""
    found = []
    for offset in range(0, len(pcm) - FRAME + 1, FRAME):
        for event in detector.feed(pcm[offset : offset + FRAME], agent_speaking=False):
            found.append((detector.silence_ms, event.signal))
    return found


def test_a_pause_is_signalled_once_then_the_turn_ends_after_the_full_wait() -> None:
    timing = TurnTiming(end_of_turn_ms=600, early_end_ms=240)
    detector = TurnDetector(timing)
    speech = speak("five five five two three four") + bytes(FRAME * (1000 // FRAME_MS))
    signals = [signal for _, signal in _signals(detector, speech)]
    assert signals == [TurnSignal.SPEECH_STARTED, TurnSignal.PAUSED, TurnSignal.TURN_ENDED]
    paused_at = next(ms for ms, s in _signals(TurnDetector(timing), speech) if s.value == "paused")
    assert paused_at == 240


def test_end_turn_at_the_pause_ends_it_there() -> None:
    detector = TurnDetector(TurnTiming(end_of_turn_ms=600, early_end_ms=240))
    pcm = speak("yes") + bytes(FRAME * 30)
    ended = None
    for offset in range(0, len(pcm) - FRAME + 1, FRAME):
        for event in detector.feed(pcm[offset : offset + FRAME], agent_speaking=False):
            if event.signal is TurnSignal.PAUSED:
                ended = detector.end_turn()
    assert ended is not None and ended.signal is TurnSignal.TURN_ENDED
    assert not detector.in_speech  # the rest of the silence starts no new turn


def test_early_end_off_keeps_the_full_wait() -> None:
    detector = TurnDetector(TurnTiming(end_of_turn_ms=600, early_end_ms=0))
    speech = speak("yes") + bytes(FRAME * 40)
    assert TurnSignal.PAUSED not in [s for _, s in _signals(detector, speech)]
