"""How fast events and audio frames cross NATS through voicemesh's code paths.

Compares, in one run against one embedded nats-server, each voicemesh path with the
baseline it is built on:

* events: FastStream handler with voicemesh's telemetry and dead-letter middlewares vs a
  raw nats-py subscription (core NATS, 640-byte JSON) — the cost of the service runtime;
* audio: ``encode_frame``/``decode_frame`` vs bare ``struct`` packing — the cost of the codec;
  and audio frames published with raw nats-py, as the gateway and agent do.

Run: ``uv run python bench/bus_throughput.py``. Each case runs ROUNDS times; the table shows
medians and the ratio to the baseline.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import median, report

from voicemesh.common import ServiceSettings, setup_telemetry
from voicemesh.common.contracts.audio import AudioFrame, decode_frame, encode_frame
from voicemesh.common.runtime.bus import make_broker
from voicemesh.common.runtime.connection import make_nats_broker
from voicemesh.common.runtime.settings import NatsSettings
from voicemesh.testkit.embedded import start_nats
from voicemesh.testkit.mesh import nats_client

ROUNDS = 5
EVENTS = 2000
FRAMES = 20000


async def raw_nats_events(url: str) -> float:
    client = await nats_client(url)
    done = asyncio.Event()
    seen = 0

    async def handler(_msg: object) -> None:
        nonlocal seen
        seen += 1
        if seen == EVENTS:
            done.set()

    await client.subscribe("bench.raw", cb=handler)
    body = b"x" * 640
    start = time.perf_counter()
    for _ in range(EVENTS):
        await client.publish("bench.raw", body)
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - start
    await client.drain()
    return EVENTS / elapsed


async def faststream_events(url: str, with_voicemesh_middlewares: bool) -> float:
    done = asyncio.Event()
    seen = 0
    if with_voicemesh_middlewares:
        telemetry = setup_telemetry("bench")
        broker, _, _ = make_broker(ServiceSettings(nats_urls=[url]), telemetry, name="bench")
    else:
        broker = make_nats_broker(
            NatsSettings(nats_urls=[url]), service="bench", graceful_timeout=5.0
        )

    @broker.subscriber("bench.fs")
    async def handler(body: dict[str, str]) -> None:
        nonlocal seen
        seen += 1
        if seen == EVENTS:
            done.set()

    await broker.start()
    body = {"payload": "x" * 620}
    start = time.perf_counter()
    for _ in range(EVENTS):
        await broker.publish(body, "bench.fs")
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - start
    await broker.stop()
    return EVENTS / elapsed


def codec(voicemesh: bool) -> float:
    pcm = bytes(640)
    header = struct.Struct("!2sBBIQII")
    start = time.perf_counter()
    if voicemesh:
        for seq in range(FRAMES):
            decode_frame(encode_frame(AudioFrame(seq, 1_700_000_000_000_000, 16000, pcm)))
    else:
        for seq in range(FRAMES):
            wire = header.pack(b"VA", 1, 0, seq, 1_700_000_000_000_000, 16000, 0) + pcm
            header.unpack_from(wire)
            _ = wire[24:]
    return FRAMES / (time.perf_counter() - start)


async def raw_audio_publish(url: str) -> float:
    client = await nats_client(url)
    frame = encode_frame(AudioFrame(0, 0, 16000, bytes(640)))
    start = time.perf_counter()
    for _ in range(FRAMES):
        await client.publish("bench.audio", frame)
    await client.flush()
    elapsed = time.perf_counter() - start
    await client.drain()
    return FRAMES / elapsed


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_nats(Path(tmp))
        try:
            results: dict[str, list[float]] = {k: [] for k in
                ("raw", "fs", "vm", "codec_base", "codec_vm", "audio_pub")}  # fmt: skip
            for _ in range(ROUNDS):
                results["raw"].append(await raw_nats_events(server.url))
                results["fs"].append(await faststream_events(server.url, False))
                results["vm"].append(await faststream_events(server.url, True))
                results["codec_base"].append(codec(False))
                results["codec_vm"].append(codec(True))
                results["audio_pub"].append(await raw_audio_publish(server.url))
        finally:
            server.stop()
    m = {k: median(v) for k, v in results.items()}
    rows = [
        ["events: raw nats-py sub (baseline)", m["raw"], 1.0],
        ["events: FastStream, no middlewares", m["fs"], m["fs"] / m["raw"]],
        ["events: voicemesh service broker", m["vm"], m["vm"] / m["raw"]],
        ["codec: bare struct (baseline)", m["codec_base"], 1.0],
        ["codec: encode+decode_frame", m["codec_vm"], m["codec_vm"] / m["codec_base"]],
        ["audio: raw nats-py publish", m["audio_pub"], m["audio_pub"] / 50],
    ]
    print(f"median of {ROUNDS} rounds; last column: ratio to baseline "
          "(audio row: call-directions of 50 frames/s one process can publish)\n")  # fmt: skip
    report("bus_throughput", ["case", "per second (median)", "ratio"], rows,
           {"rounds": ROUNDS, "raw": results})  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
