"""``python -m voicemesh.apnssim``: run the APNs simulator and its admin API until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

import uvicorn

from voicemesh.apnssim.admin import admin_app
from voicemesh.apnssim.certs import make_tls_material
from voicemesh.apnssim.server import MAX_TOKEN_AGE_S, ApnsSimulator, ProviderKey
from voicemesh.common.runtime.service import GracefulServer

log = logging.getLogger("voicemesh.apnssim")


def load_keys(path: Path) -> list[ProviderKey]:
    """``[{"key_id", "team_id", "public_key", "topics"?}, ...]`` from a JSON file."""
    entries = json.loads(path.read_text())
    return [
        ProviderKey(
            e["key_id"],
            e["team_id"],
            e["public_key"],
            frozenset(e["topics"]) if e.get("topics") is not None else None,
        )
        for e in entries
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m voicemesh.apnssim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="HTTP/2 + TLS port (0: any free)")
    parser.add_argument("--admin-port", type=int, default=0, help="plain HTTP admin port")
    parser.add_argument("--tls-dir", type=Path, required=True, help="where certificates live")
    parser.add_argument("--cert", type=Path, help="server certificate (default: made per run)")
    parser.add_argument("--key", type=Path, help="server private key (with --cert)")
    parser.add_argument("--ca", type=Path, help="the CA that signed --cert (for /v1/info)")
    parser.add_argument("--keys-file", type=Path, help="JSON list of accepted provider keys")
    parser.add_argument("--max-token-age-s", type=float, default=MAX_TOKEN_AGE_S)
    parser.add_argument("--slow-s", type=float, default=1.0)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    if args.cert and args.key:
        cert, key, ca = args.cert, args.key, args.ca or args.cert
    else:
        material = make_tls_material(args.tls_dir)
        cert, key, ca = material.cert_path, material.key_path, material.ca_path
    keys = load_keys(args.keys_file) if args.keys_file else []
    simulator = ApnsSimulator(
        cert, key, keys=keys, max_token_age_s=args.max_token_age_s, slow_s=args.slow_s
    )
    await simulator.start(args.host, args.port)
    config = uvicorn.Config(
        admin_app(simulator, ca_file=str(ca)),
        host=args.host,
        port=args.admin_port,
        log_config=None,
        access_log=False,
    )
    # Stops on SIGTERM/SIGINT without re-raising it, so ``finally`` closes the simulator.
    admin = GracefulServer(config)
    log.info(
        "APNs simulator on %s:%d (CA %s), %d provider keys; admin on port %d",
        args.host,
        simulator.port,
        ca,
        len(keys),
        args.admin_port,
    )
    try:
        await admin.serve()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
