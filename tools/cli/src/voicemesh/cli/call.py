"""``voicemesh call``: place a call to the agent from a terminal, as the simulated phone.

Against a running stack (``voicemesh up``: URLs from ``<data-dir>/stack.json``, keys from
``secrets.json``, or flags) it either calls in (``POST /v1/{tenant}/calls``, then WHIP) or,
with ``--push``, has the tenant backend request a call so push rings the simulated phone
through the APNs simulator and the phone answers. The caller says each ``--say`` line
(default: the vertical's demo script) once the agent has finished speaking, progress is
printed as it happens (ringing, connected, agent said, caller said, booked, texted,
ended), then the stored transcript and the call's trace id.

Every call starts its own trace: the id printed at the end finds the call in Jaeger.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from voicemesh.cli.bus import open_nats
from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.events import (
    AnyEvent,
    CallConnected,
    CallEnded,
    CallFailed,
    CallMissed,
    CallRequested,
    CallRinging,
    ToolEvent,
    TranscriptSegment,
    new_call_id,
)
from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.common.runtime.publisher import JetStreamPublisher

__all__ = ["CallOptions", "main", "place_call"]

DEMO_BUNDLE_ID = "dev.voicemesh.phone"  # the bundle the local stack's APNs keys are made for


@dataclass
class CallOptions:
    tenant: str
    gateway_url: str
    nats_url: str
    api_key: str
    lines: list[tuple[str, str]]
    push: bool = False
    push_url: str = ""
    apnssim_url: str = ""
    transcript_url: str = ""
    user: str = "cli-user"
    timeout_s: float = 180.0


class CallFailedError(RuntimeError):
    """The call could not be placed or never connected."""


def _tenants() -> TenantRegistry:
    spec = os.environ.get("VOICEMESH_TENANTS", "")
    return TenantRegistry.parse(spec) if spec else TenantRegistry.demo()


def demo_lines(tenant: str) -> list[tuple[str, str]]:
    """The tenant's vertical's demo script (say, expect) from the agent's profile."""
    known = _tenants().get(tenant)
    if known is None:
        raise CallFailedError(f"unknown tenant {tenant!r}; pass --say lines")
    try:
        from importlib import resources

        profile = resources.files("voicemesh.agent").joinpath(
            f"profiles/{known.vertical.value}.yaml"
        )
        data: dict[str, Any] = yaml.safe_load(profile.read_text())
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise CallFailedError("the agent's profiles are not installed; pass --say lines") from exc
    return [(str(s["say"]), str(s.get("expect") or "")) for s in data.get("demo_script", [])]


class Progress:
    """Prints what happens on the call, one line each, with seconds since the start."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.started:6.1f}s] {text}\n")
        self.out.flush()

    def event(self, event: AnyEvent) -> None:
        match event:
            case CallRinging():
                self(f"ringing ({event.devices} device(s))")
            case CallConnected():
                self(f"connected ({event.direction}, {event.vertical or 'unknown vertical'})")
            case TranscriptSegment():
                self(f"{event.speaker.value} said: {event.text}")
            case ToolEvent() if event.service == "calendar" and event.name == "book":
                self("booked" if event.ok else f"booking failed ({event.error_code})")
            case ToolEvent() if event.service == "sms":
                self("texted a confirmation" if event.ok else "text failed")
            case CallMissed():
                self("missed: nobody answered")
            case CallFailed():
                self(f"failed: {event.reason.value} {event.detail}")
            case CallEnded():
                self(f"ended ({event.reason.value}, {event.duration_s:.1f}s)")
            case _:
                return


async def place_call(options: CallOptions, out: TextIO = sys.stdout) -> int:
    """Place one call and hold the conversation; 0 when it connected and ended cleanly."""
    from voicemesh.phone import PhoneCall, SimulatedPhone, dial
    from voicemesh.phone.script import CallWatcher, Line, converse

    progress = Progress(out)
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    auth = {"Authorization": f"Bearer {options.api_key}"}
    nc = await open_nats(options.nats_url, name="voicemesh-call")
    call: PhoneCall | None = None
    try:
        async with httpx.AsyncClient(timeout=15) as http:
            if options.push:
                call_id = new_call_id()
                watcher = CallWatcher(nc, options.tenant, call_id, on_event=progress.event)
                await watcher.start()
                phone = SimulatedPhone(
                    token=secrets.token_hex(32),
                    user_id=options.user,
                    tenant=options.tenant,
                    bundle_id=DEMO_BUNDLE_ID,
                    apnssim_url=options.apnssim_url,
                    push_url=options.push_url,
                    api_key=options.api_key,
                )
                await phone.register(http)
                progress(f"phone registered for {options.tenant}/{options.user}; requesting")
                request = CallRequested(
                    tenant=options.tenant, call_id=call_id, source="cli", user_id=options.user
                )
                await JetStreamPublisher(nc).publish(
                    request,
                    subjects.call_lifecycle(options.tenant, call_id),
                    headers={"traceparent": traceparent},
                )
                payload = await phone.next_push(http, timeout=30)
                progress(f"the phone rings: {payload['callerName']}; answering")
                call = await phone.pick_up(http, payload)
            else:
                created = await http.post(
                    f"{options.gateway_url}/v1/{options.tenant}/calls", headers=auth
                )
                if created.status_code != 201:
                    raise CallFailedError(
                        f"the gateway refused the call: {created.status_code} {created.text}"
                    )
                body = created.json()
                call_id = body["call_id"]
                watcher = CallWatcher(nc, options.tenant, call_id, on_event=progress.event)
                await watcher.start()
                progress(f"calling {options.tenant} (call {call_id})")
                call = await dial(http, body["whip_url"], body["token"], traceparent=traceparent)
            try:
                script = [Line(say, expect or None) for say, expect in options.lines]
                await asyncio.wait_for(
                    converse(call, watcher, script, strict=False), options.timeout_s
                )
                if watcher.ended() is None:
                    progress("hanging up")
                    await call.hang_up()
                with contextlib.suppress(TimeoutError):
                    await watcher.wait(watcher.ended, 10, "the end of the call")
            finally:
                await call.close()
                await watcher.stop()
            await _print_transcript(http, options, call_id, watcher, out)
    finally:
        await nc.drain()
    out.write(f"call id:  {call_id}\ntrace id: {trace_id}\n")
    ended = watcher.ended()
    return 0 if ended is not None and call.connected.is_set() else 1


async def _print_transcript(
    http: httpx.AsyncClient, options: CallOptions, call_id: str, watcher: Any, out: TextIO
) -> None:
    """The transcript service's record of the call (it stores asynchronously: a few tries),
    or what was seen on NATS when the service is not reachable."""
    segments: list[tuple[str, str]] = []
    if options.transcript_url:
        url = f"{options.transcript_url}/v1/{options.tenant}/calls/{call_id}/transcript"
        expected = len(watcher.segments)
        for _ in range(30):
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(
                    url, headers={"Authorization": f"Bearer {options.api_key}"}
                )
                if response.status_code == 200:
                    stored = response.json()["segments"]
                    segments = [(s["speaker"], s["text"]) for s in stored]
                    if len(segments) >= expected:
                        break
            await asyncio.sleep(0.3)
    source = "transcript service"
    if not segments:
        source = "seen on NATS"
        segments = [(h.segment.speaker.value, h.segment.text) for h in watcher.segments]
    out.write(f"\ntranscript ({source}):\n")
    for speaker, text in segments:
        out.write(f"  {speaker:>6}: {text}\n")


def _stack(data_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    urls: dict[str, str] = {}
    secrets_: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        state = json.loads((data_dir / "stack.json").read_text())
        urls = {c["name"]: c["url"] for c in state["components"]}
    with contextlib.suppress(FileNotFoundError, ValueError):
        secrets_ = json.loads((data_dir / "secrets.json").read_text())
    return urls, secrets_


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="voicemesh call",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tenant", default="demo-salon")
    parser.add_argument(
        "--say",
        action="append",
        help="a line the caller says (repeatable; default: the vertical's demo script)",
    )
    parser.add_argument(
        "--push",
        action="store_true",
        help="outbound: request the call, ring the simulated phone by VoIP push, answer it",
    )
    parser.add_argument("--user", default="cli-user", help="the phone's user id (with --push)")
    parser.add_argument("--data-dir", default=".voicemesh", help="where voicemesh up keeps state")
    parser.add_argument("--gateway-url", help="default: from stack.json")
    parser.add_argument("--push-url", help="default: from stack.json")
    parser.add_argument("--apnssim-url", help="default: from stack.json")
    parser.add_argument("--transcript-url", help="default: from stack.json")
    parser.add_argument("--nats-url", help="default: from stack.json")
    parser.add_argument("--api-key", help="the tenant's API key (default: from secrets.json)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for the whole call")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> CallOptions:
    urls, stored = _stack(Path(args.data_dir))
    api_key = args.api_key or stored.get("api_keys", {}).get(args.tenant)
    gateway = args.gateway_url or urls.get("gateway")
    nats_url = args.nats_url or urls.get("nats")
    missing = [
        name
        for name, value in (("gateway URL", gateway), ("NATS URL", nats_url), ("API key", api_key))
        if not value
    ]
    if missing:
        raise CallFailedError(
            f"no {', '.join(missing)}: start the stack (voicemesh up) or pass the flags"
        )
    lines = [(line, "") for line in args.say] if args.say else demo_lines(args.tenant)
    options = CallOptions(
        tenant=args.tenant,
        gateway_url=str(gateway).rstrip("/"),
        nats_url=str(nats_url),
        api_key=str(api_key),
        lines=lines,
        push=args.push,
        push_url=(args.push_url or urls.get("push", "")).rstrip("/"),
        apnssim_url=(args.apnssim_url or urls.get("apns-sim", "")).rstrip("/"),
        transcript_url=(args.transcript_url or urls.get("transcript", "")).rstrip("/"),
        user=args.user,
        timeout_s=args.timeout,
    )
    if options.push and not (options.push_url and options.apnssim_url):
        raise CallFailedError("--push needs the push service and the APNs simulator URLs")
    return options


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    try:
        options = options_from(parse_args(argv))
        return asyncio.run(place_call(options, out))
    except CallFailedError as exc:
        print(f"voicemesh call: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # The phone or the gateway gave up: say what happened, not a traceback.
        print(f"voicemesh call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
