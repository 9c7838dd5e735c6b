"""Agent latency at the caller: end of the caller's speech → first agent audio frame.

Runs a real nats-server, the agent in this process and simulated gateways (real-time
20 ms frames). Three offline-pipeline calls and three calls to a fixed-reply agent (no
recognition, no dialog, pre-synthesised audio) run at once, 7 turns each; the fixed-reply
figures minus the end-of-turn wait are the platform's own overhead (NATS, framing, pacing,
scheduling). Writes bench/results/agent_latency.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.client import Client as NatsClient

from voicemesh.agent import AgentSettings, create_app
from voicemesh.agent.providers.base import CallContext, Conversation, Reply
from voicemesh.agent.providers.offline import EspeakSynthesizer, OfflineProvider
from voicemesh.agent.speech import speak
from voicemesh.common.contracts import streams, subjects
from voicemesh.common.contracts.events import CallConnected
from voicemesh.testkit.agent import SimulatedCaller
from voicemesh.testkit.embedded import start_nats
from voicemesh.testkit.fakes import standard_desk
from voicemesh.testkit.mesh import nats_client

TURNS = 7
CALLS = 3
LINES = ["i would like to book a haircut", "with maria", "tomorrow at three p m",
         "my name is mary jones", "five five five two three four five six seven eight", "yes",
         "i would like to book a manicure"]  # fmt: skip


class _Fixed:
    """Hears nothing, answers the same short line, pre-synthesised: only the platform is left."""

    def __init__(self, pcm: bytes) -> None:
        self.sample_rate = 16000
        self._pcm = pcm

    async def open(self) -> None: ...
    def start_utterance(self) -> None: ...
    def feed(self, pcm: bytes) -> None: ...
    async def finish_utterance(self) -> str:
        return "fixed"

    async def close(self) -> None: ...
    async def synthesize(self, text: str) -> bytes:
        return self._pcm

    async def greeting(self) -> Reply:
        return Reply("Hello.")

    async def respond(self, text: str) -> Reply:
        return Reply("Okay.")


class FixedProvider:
    name = "fixed"

    def __init__(self) -> None:
        self._fixed = _Fixed(speak("Okay."))

    def transcriber(self, context: CallContext) -> _Fixed:
        return self._fixed

    def synthesizer(self, context: CallContext) -> _Fixed:
        return self._fixed

    def conversation(self, context: CallContext) -> Conversation:
        return self._fixed

    async def close(self) -> None: ...


class RoutingProvider(OfflineProvider):
    """Offline for ``demo-salon`` calls, fixed-reply for calls whose id starts with ``fixed``."""

    def __init__(self) -> None:
        super().__init__()
        self.fixed = FixedProvider()

    def transcriber(self, context: CallContext):  # type: ignore[no-untyped-def]
        if context.call_id.startswith("fixed"):
            return self.fixed.transcriber(context)
        return super().transcriber(context)

    def synthesizer(self, context: CallContext):  # type: ignore[no-untyped-def]
        if context.call_id.startswith("fixed"):
            return self.fixed.synthesizer(context)
        return EspeakSynthesizer(context.profile)

    def conversation(self, context: CallContext) -> Conversation:
        if context.call_id.startswith("fixed"):
            return self.fixed.conversation(context)
        return super().conversation(context)


async def one_call(nc: NatsClient, call_id: str) -> list[float]:
    caller = SimulatedCaller(nc, "demo-salon", call_id)
    await caller.start()
    event = CallConnected(tenant="demo-salon", call_id=call_id, source="bench", vertical="salon")
    await nc.jetstream().publish(subjects.call_lifecycle("demo-salon", call_id),
                                 event.model_dump_json().encode())  # fmt: skip
    latencies = []
    await caller.wait_for_agent_line(1, timeout=20)
    for turn in range(TURNS):
        before = len(caller.audio)
        ended = await caller.say(LINES[turn % len(LINES)])
        await caller.wait_for_agent_line(turn + 2, timeout=20)
        first = next((a.received_at for a in caller.audio[before:] if a.received_at > ended), None)
        if first is not None:
            latencies.append((first - ended) * 1000)
    await caller.stop()
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_nats(Path(tmp))
        try:
            nc = await nats_client(server.url)
            await streams.apply(nc.jetstream())
            desk = standard_desk(nc, "demo-salon")
            await desk.start()
            settings = AgentSettings(nats_urls=[server.url])
            service = create_app(
                settings, provider=RoutingProvider(), now=lambda: datetime.now(UTC)
            )
            await service.start()
            results = await asyncio.gather(
                *(one_call(nc, f"offline{i}") for i in range(CALLS)),
                *(one_call(nc, f"fixed{i}") for i in range(CALLS)),
            )
            await service.stop()
            await nc.drain()
        finally:
            server.stop()
    offline = [v for r in results[:CALLS] for v in r]
    fixed = [v for r in results[CALLS:] for v in r]
    eot = 550.0  # the salon profile's end-of-turn hangover, included in both
    overhead = [v - eot for v in fixed]
    rows = [("offline pipeline", offline), ("fixed-reply agent", fixed),
            ("platform overhead", overhead)]  # fmt: skip
    print(f"{'measured at the caller (ms)':<28} {'turns':>6} {'p50':>8} {'p95':>8} {'max':>8}")
    for label, values in rows:
        print(f"{label:<28} {len(values):>6} {statistics.median(values):>8.0f} "
              f"{pct(values, 0.95):>8.0f} {max(values):>8.0f}")  # fmt: skip
    print(f"end-of-turn hangover in both: {eot:.0f} ms; {CALLS} + {CALLS} concurrent calls")
    out = Path(__file__).parent / "results" / "agent_latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "v2v_p50_ms": statistics.median(offline), "v2v_p95_ms": pct(offline, 0.95),
        "fixed_p50_ms": statistics.median(fixed), "fixed_p95_ms": pct(fixed, 0.95),
        "overhead_p95_ms": pct(overhead, 0.95), "end_of_turn_ms": eot,
        "concurrent_calls": 2 * CALLS, "turns": len(offline),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
