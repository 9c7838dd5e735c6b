"""Voice-to-voice latency through the gateway, measured at the caller, and call capacity.

``uv run python bench/voice.py``: real nats-server and Redis, the gateway as its own
process, the agent in this process (so each turn's stage timings can be read), and callers
in a third process that are real aiortc peers (the simulated phone) dialling the gateway
over WHIP and speaking eSpeak audio. Latency is taken where a caller feels it: from the
last frame of the caller's speech leaving the phone to the first frame of the agent's voice
arriving at it.

1. Latency: three offline-pipeline calls (``demo-salon``) and, in the same run, three calls
   to a fixed-reply agent (``demo-real-estate``: recognises nothing, answers one
   pre-synthesised word at once) with the same end-of-turn wait, seven turns each. The
   fixed-reply figures minus that wait are the platform's own overhead: the gateway both
   ways, NATS, framing, pacing and scheduling. Each offline turn is split into end-of-turn
   wait, STT, dialog and tools, TTS (the agent's own timings) and transport (the rest).
   Three more fixed-reply calls come from phones whose receive jitter buffer holds one
   frame, as the gateway's does, instead of aiortc's fixed four: the difference is the
   test phone's own buffer, which a browser's adaptive one mostly does not add.
2. WER: what the agent heard of the callers' lines (through Opus, the gateway's
   resampler and jitter buffer) against what they said.
3. Capacity: 1, 2, 4 and 6 concurrent offline calls. A load keeps real time when every turn
   is answered and voice-to-voice p95 stays within 1.5 s and twice the one-call p95; the
   callers run in a process of their own, as phones would.

4. Outcomes: the caller corpus (``bench/voice_corpus.py``): the held-out outcome accuracy
   and crisis recall, at text level (``*_text``) until the audio run has a recogniser.

Writes bench/results/voice.json (``v2v_p50_ms``, ``v2v_p95_ms``, ``overhead_p95_ms``,
``wer``, ``max_realtime_calls``, the per-stage split, ``outcome_accuracy``,
``outcome_accuracy_10db``, ``crisis_recall`` and the ``*_text`` figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _report import median, percentile, report
from agent_latency import FixedProvider
from agent_stt_accuracy import word_errors
from gateway import Running, wait_http
from voice_corpus import corpus_report

from voicemesh.agent import AgentService, AgentSettings, create_app
from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.agent.providers.base import CallContext, Conversation
from voicemesh.agent.providers.offline import EspeakSynthesizer, OfflineProvider
from voicemesh.agent.session import TurnTiming
from voicemesh.agent.speech import speak
from voicemesh.common.contracts import streams
from voicemesh.common.contracts.events import Speaker
from voicemesh.phone import dial
from voicemesh.phone.phone import VOICE_RMS, PhoneCall
from voicemesh.phone.script import CallWatcher
from voicemesh.testkit.embedded import free_port, start_nats, start_redis
from voicemesh.testkit.fakes import standard_desk
from voicemesh.testkit.mesh import nats_client

OFFLINE, FIXED = "demo-salon", "demo-real-estate"
API_KEY = "bench-voice-api-key-0123456789abcdef"
SECRET = "bench-voice-call-token-secret-0123456789"  # noqa: S105 - throwaway, local only
TURNS = 7
CALLS = 3
# VOICE_BENCH_CAPACITY="1,2" picks other load levels ("" skips the capacity sweep).
CAPACITY_LEVELS = [
    int(n) for n in os.environ.get("VOICE_BENCH_CAPACITY", "1,2,4,6").split(",") if n
]
CAPACITY_TURNS = 3
#: The salon's demo script up to the booking (its last line says goodbye and ends the call).
SCRIPT = ProfileLibrary().get("salon").demo_script[:-1]


def next_line(agent_said: str) -> str:
    """What the caller says to the agent's last line: the script's answer to the question
    actually asked (the recogniser sometimes mishears and the agent asks again), and after
    the booking is made, the first line again: another booking."""
    said = agent_said.lower()
    asked = [i for i, step in enumerate(SCRIPT) if step.expect.lower() in said]
    if not asked:
        return SCRIPT[0].say
    step = asked[-1] + 1
    return SCRIPT[step].say if step < len(SCRIPT) else SCRIPT[0].say


class TenantRouting(OfflineProvider):
    """The offline pipeline, except the fixed-reply agent for the ``FIXED`` tenant."""

    def __init__(self) -> None:
        super().__init__()
        self._fixed = FixedProvider()  # the same fixed-reply agent as bench/agent_latency.py

    def transcriber(self, context: CallContext):  # type: ignore[no-untyped-def]
        if context.tenant.id == FIXED:
            return self._fixed.transcriber(context)
        return super().transcriber(context)

    def synthesizer(self, context: CallContext):  # type: ignore[no-untyped-def]
        if context.tenant.id == FIXED:
            return self._fixed.synthesizer(context)
        return EspeakSynthesizer(context.profile)

    def conversation(self, context: CallContext) -> Conversation:
        if context.tenant.id == FIXED:
            return self._fixed.conversation(context)
        return super().conversation(context)


@dataclass
class CallResult:
    tenant: str
    call_id: str = ""
    v2v_ms: list[float] = field(default_factory=list)
    turns: list[tuple[float, float]] = field(default_factory=list)  # (speech end, first heard)
    unanswered: int = 0
    timings: list[TurnTiming] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)


def _voice_after(call: PhoneCall, moment: float) -> float | None:
    return next((at for at, rms in call.heard if at > moment and rms > VOICE_RMS), None)


async def one_call(
    http: httpx.AsyncClient, nc: Any, gateway: str, tenant: str, turns: int
) -> CallResult:
    created = await http.post(
        f"{gateway}/v1/{tenant}/calls", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    created.raise_for_status()
    body = created.json()
    result = CallResult(tenant, body["call_id"])
    watcher = CallWatcher(nc, tenant, body["call_id"])
    await watcher.start()
    call = await dial(http, body["whip_url"], body["token"], connect_timeout_s=20)
    try:
        await call.wait_quiet(0.8, timeout=30)  # the greeting, heard to the end
        for _ in range(turns):
            agent_lines = watcher.lines(Speaker.AGENT)
            line = next_line(agent_lines[-1].segment.text if agent_lines else "")
            pcm = await asyncio.to_thread(speak, line, 16000)
            ended = await call.play(pcm, 16000)
            result.said.append(line)
            deadline = ended + 10
            first = None
            while first is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                first = _voice_after(call, ended)
            if first is None:
                result.unanswered += 1
                continue
            result.v2v_ms.append((first - ended) * 1000)
            result.turns.append((ended, first))
            with contextlib.suppress(TimeoutError):
                await call.wait_quiet(0.6, since=first, timeout=20)
        result.heard = [h.segment.text for h in watcher.lines(Speaker.CALLER)]
    finally:
        await call.hang_up()
        await watcher.stop()
    return result


async def callers(
    gateway: str, nats_url: str, tenants: list[str], turns: int, prefetch: int | None = None
) -> None:
    """The callers' process: every call at once; one JSON line of results on stdout.
    ``prefetch`` sets the phones' receive jitter buffer (aiortc's fixed default is 4 frames;
    a browser's adaptive buffer settles lower on a quiet network)."""
    if prefetch is not None:
        from voicemesh.gateway.media import patch_aiortc

        patch_aiortc(prefetch, fast_level=False, opus_bitrate=None)  # the buffer alone
    nc = await nats_client(nats_url)
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            results = await asyncio.gather(
                *(one_call(http, nc, gateway, t, turns) for t in tenants)
            )
    finally:
        await nc.drain()
    fields = ("tenant", "call_id", "v2v_ms", "turns", "unanswered", "said", "heard")
    print(json.dumps([{k: getattr(r, k) for k in fields} for r in results]))


async def run_calls(
    gateway: str,
    nats_url: str,
    agent: AgentService,
    tenants: list[str],
    turns: int,
    prefetch: int | None = None,
) -> list[CallResult]:
    """The calls from a separate process (its WebRTC stacks must not share the agent's
    event loop); monotonic clocks are system-wide, so its times line up with the agent's."""
    sessions: dict[str, Any] = {}

    async def track() -> None:
        while True:
            sessions.update(agent.runtime.sessions)
            await asyncio.sleep(0.05)

    tracker = asyncio.create_task(track())
    try:
        argv = ["callers", gateway, nats_url, ",".join(tenants), str(turns)]
        if prefetch is not None:
            argv.append(str(prefetch))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, *argv, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
    finally:
        tracker.cancel()
    if proc.returncode != 0:
        raise RuntimeError(f"the callers' process failed ({proc.returncode})")
    results = []
    for raw in json.loads(out.decode().strip().splitlines()[-1]):
        result = CallResult(**{**raw, "turns": [tuple(t) for t in raw["turns"]]})
        session = sessions.get(result.call_id)
        result.timings = list(session.timings) if session is not None else []
        results.append(result)
    return results


def _stages(results: list[CallResult]) -> dict[str, list[float]]:
    """Each answered turn split by the agent's own timestamps (same process, same clock):
    caller's end of speech → the agent processing the last voiced frame (transport in) →
    end-of-turn wait, STT, dialog and tools, TTS → first reply frame published → first
    voice frame heard at the caller (transport out: NATS, gateway jitter buffer, WebRTC)."""
    stages: dict[str, list[float]] = {
        "transport in": [], "end-of-turn wait": [], "STT": [], "dialog and tools": [],
        "TTS": [], "agent scheduling": [], "transport out": [],
    }  # fmt: skip
    for result in results:
        for (ended, first), timing in zip(result.turns, result.timings, strict=False):
            if not timing.first_frame_at or not timing.speech_ended_at:
                continue
            inside = (timing.first_frame_at - timing.speech_ended_at) * 1000
            known = timing.end_of_turn_wait_ms + timing.stt_ms + timing.dialog_ms + timing.tts_ms
            stages["transport in"].append((timing.speech_ended_at - ended) * 1000)
            stages["end-of-turn wait"].append(timing.end_of_turn_wait_ms)
            stages["STT"].append(timing.stt_ms)
            stages["dialog and tools"].append(timing.dialog_ms)
            stages["TTS"].append(timing.tts_ms)
            stages["agent scheduling"].append(inside - known)
            stages["transport out"].append((first - timing.first_frame_at) * 1000)
    return stages


async def main() -> None:
    library = ProfileLibrary()
    eot_fixed = float(library.get("real_estate").turn.end_of_turn_ms)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        run = Running(tmp)
        server = start_nats(tmp / "nats")
        redis = start_redis(tmp / "redis")
        run.servers += [server, redis]
        try:
            nc = await nats_client(server.url)
            await streams.apply(nc.jetstream())
            desk = standard_desk(nc, OFFLINE)
            await desk.start()
            port = free_port()
            gateway = f"http://127.0.0.1:{port}"
            run.spawn(
                [sys.executable, "-m", "voicemesh.gateway"],
                {
                    "VOICEMESH_NATS_URL": server.url,
                    "VOICEMESH_REDIS_URL": redis.url,
                    "VOICEMESH_CALL_TOKEN_SECRET": SECRET,
                    "VOICEMESH_API_KEYS": f"{OFFLINE}:{API_KEY},{FIXED}:{API_KEY}",
                    "VOICEMESH_HTTP_PORT": str(port),
                    "VOICEMESH_LOG_LEVEL": "WARNING",
                    "VOICEMESH_WORKER_ID": f"bench-voice-{port}",
                },
                "gateway",
            )
            await wait_http(f"{gateway}/healthz", 30)
            agent = create_app(
                AgentSettings(nats_urls=[server.url], log_level="WARNING"),
                provider=TenantRouting(),
                now=lambda: datetime.now(UTC),
            )
            await agent.start()
            print("corpus: every call through the offline dialog, at text level")
            corpus = await corpus_report(nc, library)
            print(f"latency: {CALLS} offline + {CALLS} fixed-reply calls, {TURNS} turns each")
            latency = await run_calls(
                gateway, server.url, agent, [OFFLINE] * CALLS + [FIXED] * CALLS, TURNS
            )
            print(f"client buffer: {CALLS} fixed-reply calls, phones at receive prefetch 1")
            lean = await run_calls(gateway, server.url, agent, [FIXED] * CALLS, TURNS, prefetch=1)
            capacity: list[dict[str, Any]] = []
            for level in CAPACITY_LEVELS:
                print(f"capacity: {level} concurrent offline calls")
                results = await run_calls(
                    gateway, server.url, agent, [OFFLINE] * level, CAPACITY_TURNS
                )
                v2v = [v for r in results for v in r.v2v_ms]
                capacity.append(
                    {
                        "calls": level,
                        "turns": len(v2v),
                        "unanswered": sum(r.unanswered for r in results),
                        "p50_ms": median(v2v),
                        "p95_ms": percentile(v2v, 95),
                    }
                )
            await agent.stop()
            await desk.stop()
            await nc.drain()
        finally:
            run.stop()

    offline = [r for r in latency if r.tenant == OFFLINE]
    fixed = [r for r in latency if r.tenant == FIXED]
    v2v = [v for r in offline for v in r.v2v_ms]
    fixed_v2v = [v for r in fixed for v in r.v2v_ms]
    overhead = [v - eot_fixed for v in fixed_v2v]
    # The same, heard by phones whose jitter buffer holds one frame (as the gateway's does):
    # how much of the overhead is the test phone's own fixed buffer.
    lean_overhead = [v - eot_fixed for r in lean for v in r.v2v_ms]
    lean_out = _stages(lean).get("transport out", [])
    stages = _stages(offline)
    fixed_stages = _stages(fixed)
    errors = sum(
        word_errors(said, heard)
        for r in offline
        for said, heard in zip(r.said, r.heard, strict=False)
    )
    words = sum(len(s.split()) for r in offline for s in r.said)
    missed = sum(len(r.said) - len(r.heard) for r in offline)
    wer = (errors + sum(len(s.split()) for r in offline for s in r.said[len(r.heard) :])) / words

    baseline_p95 = next((c["p95_ms"] for c in capacity if c["calls"] == 1), float("nan"))
    for row in capacity:
        row["real_time"] = (
            row["unanswered"] == 0 and row["p95_ms"] <= 1500 and row["p95_ms"] <= 2 * baseline_p95
        )
    max_realtime = max((c["calls"] for c in capacity if c["real_time"]), default=0)

    rows: list[list[Any]] = [
        ["voice to voice, offline pipeline", len(v2v), median(v2v), percentile(v2v, 95)],
        ["voice to voice, fixed-reply agent", len(fixed_v2v), median(fixed_v2v),
         percentile(fixed_v2v, 95)],
        [f"platform overhead (fixed - {eot_fixed:.0f} ms wait)", len(overhead),
         median(overhead), percentile(overhead, 95)],
    ]  # fmt: skip
    rows += [
        ["platform overhead, phones at prefetch 1", len(lean_overhead), median(lean_overhead),
         percentile(lean_overhead, 95)],
        ["  fixed, prefetch 1: transport out", len(lean_out), median(lean_out),
         percentile(lean_out, 95)],
    ]  # fmt: skip
    rows += [
        [f"  offline: {name}", len(values), median(values), percentile(values, 95)]
        for name, values in stages.items()
    ]
    rows += [
        [f"  fixed: {name}", len(values), median(values), percentile(values, 95)]
        for name, values in fixed_stages.items()
        if name in {"transport in", "agent scheduling", "transport out"}
    ]
    rows += [
        [f"capacity: {c['calls']} calls ({'real time' if c['real_time'] else 'falls behind'})",
         c["turns"], c["p50_ms"], c["p95_ms"]]
        for c in capacity
    ]  # fmt: skip
    report(
        "voice",
        ["measured at the caller (ms)", "turns", "p50", "p95"],
        rows,
        {
            "v2v_p50_ms": median(v2v),
            "v2v_p95_ms": percentile(v2v, 95),
            "fixed_p50_ms": median(fixed_v2v),
            "fixed_p95_ms": percentile(fixed_v2v, 95),
            "overhead_p50_ms": median(overhead),
            "overhead_p95_ms": percentile(overhead, 95),
            "overhead_prefetch1_p50_ms": median(lean_overhead),
            "overhead_prefetch1_p95_ms": percentile(lean_overhead, 95),
            "stages_p50_ms": {k: median(v) for k, v in stages.items()},
            "stages_p95_ms": {k: percentile(v, 95) for k, v in stages.items()},
            "fixed_stages_p50_ms": {k: median(v) for k, v in fixed_stages.items()},
            "wer": wer,
            "unheard_lines": missed,
            "unanswered_turns": sum(r.unanswered for r in latency),
            "max_realtime_calls": max_realtime,
            "capacity": capacity,
            **corpus,
            "aims": {"v2v_p50_ms": 600, "v2v_p95_ms": 900, "overhead_p95_ms": 60, "wer": 0.25},
        },
    )
    print("held-out outcome accuracy by vertical (text level: the dialog, no recogniser)")
    for vertical, share in corpus["outcome_by_vertical_text"].items():
        print(f"  {vertical:18} {share:.3f}")
    print(
        f"outcomes: {corpus['outcome_accuracy_text']:.3f} held out at text level, crisis "
        f"recall {corpus['crisis_recall_text']:.3f}, false alarms "
        f"{corpus['false_alarm_rate_text']:.3f}"
    )
    print(
        f"WER through the gateway {wer:.3f} over {words} words ({missed} lines unheard); "
        f"max real-time offline calls: {max_realtime}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["callers"]:
        url, nats_address, names, count, *rest = sys.argv[2:]
        prefetch = int(rest[0]) if rest else None
        asyncio.run(callers(url, nats_address, names.split(","), int(count), prefetch))
    else:
        asyncio.run(main())
