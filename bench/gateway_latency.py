"""Gateway latency: aiortc's default receive jitter buffer (prefetch 4) against the patch.

``uv run python bench/gateway_latency.py``: one call at a time from a separate client
process (stock aiortc, 200 ms beeps once a second), echoed by an agent on NATS through the
gateway, and, as the baseline in the same run, echoed by a bare aiortc server. The round
trip is mouth to ear at the caller (beep sent → beep heard); only the server's receive
prefetch changes between rows. Writes ``bench/results/gateway_latency.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway import (
    RESULTS,
    Running,
    measure,
    percentile,
    print_rows,
    start_bare,
    start_gateway,
    wait_http,
)

WINDOW_S = 6.0


async def main() -> None:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        run = Running(tmp)
        try:
            nats_url, redis_url = await run.start_servers()
            for prefetch in (4, 1):
                gw_pid, gw_url = start_gateway(run, nats_url, redis_url, prefetch)
                bare_pid, bare_url = start_bare(run, prefetch)
                await wait_http(gw_url + "/healthz")
                await wait_http(bare_url + "/whip")
                for kind, pid, url in (("bare", bare_pid, bare_url), ("gateway", gw_pid, gw_url)):
                    result = await measure(run, pid, url, kind, 1, nats_url, seconds=WINDOW_S)
                    rtts = result["rtts_ms"]
                    rows.append(
                        {
                            "server": "bare aiortc echo"
                            if kind == "bare"
                            else "gateway + echo agent",
                            "receive_prefetch": prefetch,
                            "rtt_p50_ms": round(statistics.median(rtts), 1),
                            "rtt_p90_ms": round(percentile(rtts, 90), 1),
                            "samples": len(rtts),
                        }
                    )
        finally:
            run.stop()
    for prefetch in (4, 1):
        bare = next(r for r in rows if r["receive_prefetch"] == prefetch and "bare" in r["server"])
        for row in rows:
            if row["receive_prefetch"] == prefetch:
                row["vs_bare_ms"] = round(row["rtt_p50_ms"] - bare["rtt_p50_ms"], 1)
    default_gw = next(r for r in rows if r["receive_prefetch"] == 4 and "gateway" in r["server"])
    for row in rows:
        row["vs_default_gateway_ms"] = round(row["rtt_p50_ms"] - default_gw["rtt_p50_ms"], 1)
    print_rows(rows)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "gateway_latency.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "gateway_latency",
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg()},
                "notes": "caller mouth-to-ear round trip, loopback; the caller is stock "
                "aiortc (its own receive prefetch of 4 frames, ~80 ms, is in every row)",
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
