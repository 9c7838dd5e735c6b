"""Every corpus call through the offline agent's dialog, at text level: the caller's lines as
transcripts, safety screening first as in the call session, tools on real NATS.

It asserts what must hold on every call (no line said more than twice in a row; every
crisis and emergency handed off; at most 2 % false alarms) and keeps a floor under the
held-out outcome accuracy. Audio-level figures are the bench's (``make bench-voice``).
"""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from voicemesh.agent.dialog import OfflineConversation
from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.testkit.corpus import figures, load_corpus, run_call

LIBRARY = ProfileLibrary()
#: a floor under the held-out outcome accuracy the offline dialog reaches at text level
#: (0.75 when written), so a change that loses callers fails here
HELDOUT_FLOOR = 0.72


async def test_the_corpus_through_the_offline_dialog(nats: NatsClient) -> None:
    runs = [await run_call(nats, c, OfflineConversation, profiles=LIBRARY) for c in load_corpus()]
    every = figures(runs)
    assert not every.loops, f"a line said more than twice in a row: {every.loops}"
    assert every.crisis_recall == 1.0, every.missed
    assert every.false_alarm_rate <= 0.02, every.false_alarms
    heldout = figures([r for r in runs if r.call.split == "heldout"])
    print(f"\nheld-out outcome accuracy {heldout.accuracy} {heldout.per_vertical}")
    assert heldout.accuracy >= HELDOUT_FLOOR, heldout.missed
