"""Gateway capacity: N concurrent calls on one worker next to a bare aiortc echo server.

``uv run python bench/gateway.py`` starts NATS, Redis, one gateway worker and a
bare aiortc echo server (the baseline, measured in the same run), then for each N runs N
calls from a separate client process and prints, per N: gateway CPU per call against the
bare echo's, the share of ``audio.in`` frames on time, the NATS hop p50/p99, the event-loop
lag, and the mouth-to-ear round trip added by the gateway. Writes
``bench/results/gateway.json`` (``rows``: one dict per N).

Helper roles (each its own process, so the gateway's CPU is measured alone):

* ``bare``: the baseline, a minimal aiortc echo server (WHIP-shaped POST, the caller's
  own track sent straight back: one decode and one encode per call, nothing else);
* ``clients``: N ``WhipCaller``s plus an echo agent on NATS; waits, prints ``READY``,
  measures for a window and prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from voicemesh.common import decode_frame
from voicemesh.common.contracts import subjects
from voicemesh.gateway.media import patch_aiortc, unpatch_aiortc
from voicemesh.testkit.embedded import free_port, start_nats, start_redis
from voicemesh.testkit.mesh import nats_client, provision
from voicemesh.testkit.tracks import ToneTrack
from voicemesh.testkit.whip import WhipCaller

TENANT = "demo-salon"
API_KEY = "bench-api-key-0123456789abcdef"
OPS_TOKEN = "bench-ops-token-0123456789abcdef"  # noqa: S105 - the load counters; local only
SECRET = "bench-call-token-secret-0123456789abcdef"  # noqa: S105 - throwaway, local only
RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


# -- orchestration ---------------------------------------------------------------------------------

CALLS = [1, 4, 8]
WINDOW_S = 4.0


def print_rows(rows: list[dict[str, Any]]) -> None:
    """``rows`` as a plain-text table, one column per key."""
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


class Running:
    """The servers of one benchmark run; everything is stopped on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.servers: list[Any] = []

    def spawn(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    async def start_servers(self) -> tuple[str, str]:
        """nats-server (streams provisioned) and redis-server; their URLs."""
        nats_server = start_nats(self.tmp / "nats")
        self.servers.append(nats_server)
        redis_server = start_redis(self.tmp / "redis")
        self.servers.append(redis_server)
        await provision(nats_server.url)
        return nats_server.url, redis_server.url

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for server in self.servers:
            server.stop()


async def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as http:
        while True:
            try:
                if (await http.get(url)).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.1)


def start_gateway(run: Running, nats_url: str, redis_url: str, prefetch: int) -> tuple[int, str]:
    port = free_port()
    env = {
        "VOICEMESH_NATS_URL": nats_url,
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_CALL_TOKEN_SECRET": SECRET,
        "VOICEMESH_API_KEYS": f"{TENANT}:{API_KEY}",
        "VOICEMESH_METRICS_TOKEN": OPS_TOKEN,
        "VOICEMESH_HTTP_PORT": str(port),
        "VOICEMESH_MAX_CALLS": "32",
        "VOICEMESH_RECEIVE_PREFETCH": str(prefetch),
        "VOICEMESH_LOG_LEVEL": "WARNING",
        "VOICEMESH_WORKER_ID": f"bench-{port}",
    }
    proc = run.spawn([sys.executable, "-m", "voicemesh.gateway"], env, f"gateway-{port}")
    return proc.pid, f"http://127.0.0.1:{port}"


def start_bare(run: Running, prefetch: int) -> tuple[int, str]:
    port = free_port()
    argv = [sys.executable, __file__, "bare", "--port", str(port), "--prefetch", str(prefetch)]
    proc = run.spawn(argv, {}, f"bare-{port}")
    return proc.pid, f"http://127.0.0.1:{port}"


async def measure(
    run: Running,
    pid: int,
    target: str,
    kind: str,
    calls: int,
    nats_url: str,
    *,
    seconds: float = WINDOW_S,
    warmup: float = 2.0,
) -> dict[str, Any]:
    """N calls from a client process; the server's CPU over the client's window."""
    argv = [sys.executable, __file__, "clients", "--target", target, "--kind", kind]
    argv += ["--calls", str(calls), "--seconds", str(seconds), "--warmup", str(warmup)]
    if kind == "gateway":
        argv += ["--nats", nats_url]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"READY":
        raise RuntimeError(f"{kind} clients failed: {line!r}")
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    result_line = await asyncio.wait_for(proc.stdout.readline(), 60)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    await proc.wait()
    result: dict[str, Any] = json.loads(result_line)
    result["cpu_pct"] = 100 * (cpu1 - cpu0) / (t1 - t0)
    return result


async def bench(calls_list: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        run = Running(tmp)
        try:
            nats_url, redis_url = await run.start_servers()
            gw_pid, gw_url = start_gateway(run, nats_url, redis_url, 1)
            bare_pid, bare_url = start_bare(run, 1)
            await wait_http(gw_url + "/healthz")
            await wait_http(bare_url + "/whip")
            rows = []
            for calls in calls_list:
                gw = await measure(run, gw_pid, gw_url, "gateway", calls, nats_url)
                bare = await measure(run, bare_pid, bare_url, "bare", calls, nats_url)
                added = (
                    gw["rtt_ms"] - bare["rtt_ms"]
                    if gw["rtt_ms"] is not None and bare["rtt_ms"] is not None
                    else None
                )
                rows.append(
                    {
                        "calls": calls,
                        "on_time_pct": round(gw["on_time_pct"], 2),
                        "cpu_per_call_pct": round(gw["cpu_pct"] / calls, 2),
                        "baseline_cpu_per_call_pct": round(bare["cpu_pct"] / calls, 2),
                        "hop_p50_ms": round(gw["hop_p50_ms"], 3),
                        "hop_p99_ms": round(gw["hop_p99_ms"], 3),
                        "loop_lag_p99_ms": gw["loop_lag_p99_ms"],
                        "rx_fps": round(gw["rx_fps"], 2),
                        "baseline_rx_fps": round(bare["rx_fps"], 2),
                        "rtt_ms": round(gw["rtt_ms"], 1) if gw["rtt_ms"] else None,
                        "baseline_rtt_ms": round(bare["rtt_ms"], 1) if bare["rtt_ms"] else None,
                        "added_latency_ms": round(added, 1) if added is not None else None,
                    }
                )
        finally:
            run.stop()
    print_rows(rows)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "gateway.json"
    payload = json.dumps(
        {
            "benchmark": "gateway",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg()},
            "window_s": WINDOW_S,
            "notes": "one gateway worker (receive prefetch 1) vs a bare aiortc echo "
            "server (same prefetch); clients and echo agent in another process; "
            "cpu in % of one core; rtt = caller mouth-to-ear round trip via echo",
            "rows": rows,
        },
        indent=2,
    )
    out.write_text(payload)
    print(f"\nwrote {out} and {RESULTS / 'gateway.json'}")


# -- bare aiortc echo server ---------------------------------------------------------------------


def run_bare(port: int, prefetch: int) -> None:
    # Stock aiortc, except the receive prefetch, so the round trips compare like for like.
    unpatch_aiortc()
    if prefetch != 4:
        patch_aiortc(prefetch, fast_level=False, opus_bitrate=None)
    pcs: set[RTCPeerConnection] = set()

    async def offer(request: Request) -> Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            pc.addTrack(track)  # echo: decode, then re-encode the same audio

        await pc.setRemoteDescription(
            RTCSessionDescription(sdp=(await request.body()).decode(), type="offer")
        )
        await pc.setLocalDescription(await pc.createAnswer())
        return Response(
            pc.localDescription.sdp,
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"/whip/{id(pc)}"},
        )

    app = Starlette(routes=[Route("/whip", offer, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- load clients ----------------------------------------------------------------------------------


async def run_clients(args: argparse.Namespace) -> None:
    arrivals: dict[str, list[tuple[int, float]]] = {}
    hops: list[float] = []
    measuring = False
    nc = await nats_client(args.nats) if args.nats else None

    async def on_audio(msg: Any) -> None:
        now = time.time()
        frame = decode_frame(msg.data)
        parsed = subjects.parse_call_subject(msg.subject)
        assert parsed is not None and nc is not None
        await nc.publish(subjects.audio_out(TENANT, parsed[1]), msg.data)
        if measuring:
            hops.append((now * 1e6 - frame.capture_us) / 1000)
            arrivals.setdefault(parsed[1], []).append((frame.seq, now))

    if nc is not None:
        await nc.subscribe(subjects.audio_in(TENANT, "*"), cb=on_audio)
    callers: list[WhipCaller] = []
    tones: list[ToneTrack] = []
    async with httpx.AsyncClient(base_url=args.target, timeout=20) as http:
        for _ in range(args.calls):
            tones.append(ToneTrack(burst_s=0.2, gap_s=0.8))
            caller = WhipCaller(http, track=tones[-1])
            if args.kind == "gateway":
                created = await caller.create(TENANT, API_KEY)
                url, token = created["whip_url"], created["token"]
            else:
                url, token = "/whip", "none"
            response = await caller.connect(url, token)
            if response.status_code != 201:
                raise SystemExit(f"call refused: {response.status_code} {response.text}")
            callers.append(caller)
        deadline = time.monotonic() + 15
        while not all([await c.connected() for c in callers]):
            if time.monotonic() > deadline:
                raise SystemExit("calls did not connect")
            await asyncio.sleep(0.05)
        await asyncio.sleep(args.warmup)
        for c, tone in zip(callers, tones, strict=True):
            c.heard.loud_at.clear()
            tone.onsets.clear()
        frames_before = [c.heard.frames for c in callers]
        measuring = True
        print("READY", flush=True)
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        measuring = False
        elapsed = time.monotonic() - started
        rtts: list[float] = []
        for c, tone in zip(callers, tones, strict=True):
            for onset in tone.onsets:
                heard = [t for t in c.heard.loud_at if onset < t < onset + 0.7]
                if heard:
                    rtts.append((heard[0] - onset) * 1000)
        rx_fps = [
            (c.heard.frames - before) / elapsed
            for c, before in zip(callers, frames_before, strict=True)
        ]
        load: dict[str, Any] = {}
        if args.kind == "gateway":
            ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
            load = (await http.get("/v1/gateway/load", headers=ops)).json()
        for c in callers:
            if args.kind == "gateway" and c.location:
                await http.delete(c.location)
            await c.close()
    if nc is not None:
        await nc.drain()
    on_time = total = 0
    for frames in arrivals.values():
        if len(frames) < 2:
            continue
        seq0 = frames[0][0]
        t0 = min(t - (seq - seq0) * 0.02 for seq, t in frames)
        for seq, t in frames:
            total += 1
            on_time += (t - (t0 + (seq - seq0) * 0.02)) <= 0.040
    print(
        json.dumps(
            {
                "rtt_ms": statistics.median(rtts) if rtts else None,
                "rtt_samples": len(rtts),
                "rtts_ms": rtts,
                "rx_fps": statistics.mean(rx_fps),
                "on_time_pct": 100.0 * on_time / total if total else None,
                "hop_p50_ms": percentile(hops, 50),
                "hop_p99_ms": percentile(hops, 99),
                "loop_lag_p99_ms": load.get("loop_lag_p99_ms"),
                "frames_out": load.get("frames_out"),
                "frames_out_late": load.get("frames_out_late"),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", nargs="?", choices=["bench", "bare", "clients"], default="bench")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--target", default="")
    parser.add_argument("--kind", choices=["gateway", "bare"], default="gateway")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--nats", default="")
    parser.add_argument(
        "--ns", default=",".join(map(str, CALLS)), help="call counts, e.g. 1,4,8,12"
    )
    args = parser.parse_args()
    if args.role == "bare":
        run_bare(args.port, args.prefetch)
    elif args.role == "clients":
        asyncio.run(run_clients(args))
    else:
        asyncio.run(bench([int(n) for n in args.ns.split(",")]))


if __name__ == "__main__":
    main()
