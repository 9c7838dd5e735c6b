"""``python -m voicemesh.phone``: register, wait for a VoIP push, answer (or decline/ignore)."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets

import httpx

from voicemesh.phone.phone import SimulatedPhone


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m voicemesh.phone", description=__doc__)
    parser.add_argument("--tenant", default="demo-salon")
    parser.add_argument("--user", default="demo-user")
    parser.add_argument("--token", default=secrets.token_hex(32), help="64+ hex digits")
    parser.add_argument("--bundle-id", default="dev.voicemesh.phone")
    parser.add_argument("--apnssim-url", default=os.environ.get("VOICEMESH_APNSSIM_URL", ""))
    parser.add_argument("--push-url", default=os.environ.get("VOICEMESH_PUSH_URL"))
    parser.add_argument("--api-key", default=os.environ.get("VOICEMESH_API_KEY"))
    parser.add_argument("--mode", choices=["answer", "decline", "ignore"], default="answer")
    parser.add_argument("--wav", help="play this WAV as the caller (default: a tone)")
    parser.add_argument("--listen-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    phone = SimulatedPhone(
        token=args.token,
        user_id=args.user,
        tenant=args.tenant,
        bundle_id=args.bundle_id,
        apnssim_url=args.apnssim_url,
        push_url=args.push_url,
        api_key=args.api_key,
    )
    async with httpx.AsyncClient(timeout=10) as http:
        await phone.register(http)
        print(f"registered token {phone.token[:12]}… for {args.tenant}/{args.user}; waiting")
        payload = await phone.next_push(http, timeout=args.timeout_s)
        print(f"ringing: {payload['callerName']} ({payload['handle']}) call {payload['call_id']}")
        if args.mode != "answer":
            print(f"{args.mode}: not answering")
            return 0
        report = await phone.answer(http, payload, wav=args.wav, listen_s=args.listen_s)
        print(
            f"answer: HTTP {report.status}, connected={report.connected}, "
            f"heard {report.frames_heard} frames (mean RMS {report.rms_heard:.0f})"
        )
        return 0 if report.connected else 1


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(asyncio.run(main_async(parse_args(argv))))


if __name__ == "__main__":
    main()
