"""``voicemesh``: the command line of the local stack and operators.

voicemesh up                    run the whole mesh locally (what ``make run`` does)
voicemesh streams apply         create missing JetStream streams and consumers
voicemesh docs [--out DIR]      export the wire contract's JSON Schemas
voicemesh call [--push] [--say LINE]...   call the agent from the terminal
voicemesh dlq list|replay --tenant T      read and replay a tenant's dead letters
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from voicemesh.cli import dlq
from voicemesh.cli.bus import open_nats
from voicemesh.common.contracts import streams
from voicemesh.common.contracts.events import event_schemas
from voicemesh.common.runtime.settings import StreamSettings


def _up(args: argparse.Namespace) -> int:
    # The local stack needs the test kit (the CLI's `local` extra), which the image lacks.
    from voicemesh.cli.stack import SERVICES, StackOptions, run_stack

    services = args.only.split(",") if args.only else list(SERVICES)
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        print(f"unknown services: {', '.join(unknown)}", file=sys.stderr)
        return 2
    options = StackOptions(
        data_dir=Path(args.data_dir),
        services=services,
        otlp_endpoint=args.otlp,
        nats_port=args.nats_port,
        ready_timeout=args.timeout,
    )
    return asyncio.run(run_stack(options))


async def _streams_apply(args: argparse.Namespace) -> int:
    client = await open_nats(args.nats_url, name="voicemesh-streams")
    try:
        results = await streams.apply(
            client.jetstream(),
            tenants=args.tenant or ["*"],
            replicas=args.replicas,
            limits=StreamSettings().limits(),  # VOICEMESH_STREAM_* over the defaults
        )
    finally:
        await client.drain()
    for result in results:
        print(f"{result.kind:<9} {result.name:<36} {result.action}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schemas = event_schemas()
    for name, schema in sorted(schemas.items()):
        (out / f"{name}.schema.json").write_text(
            json.dumps(schema, indent=2, sort_keys=True) + "\n"
        )
    print(f"wrote {len(schemas)} JSON Schemas to {out}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    # The audit service owns its chain format; the CLI only runs its verifier.
    argv = [sys.executable, "-m", "voicemesh.audit", "verify", *args.rest]
    return subprocess.run(argv, check=False).returncode  # noqa: S603 - fixed module, user flags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="voicemesh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole mesh locally")
    up.add_argument(
        "--data-dir", default=".voicemesh", help="where NATS, Redis and SQLite keep data"
    )
    up.add_argument("--only", help="comma-separated services to run (default: all)")
    up.add_argument(
        "--otlp",
        default=os.environ.get("VOICEMESH_OTLP_ENDPOINT"),
        help="OTLP/HTTP endpoint for traces, e.g. http://127.0.0.1:4318",
    )
    up.add_argument("--nats-port", type=int, default=None, help="default: a free port")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for /healthz")
    up.set_defaults(run=_up)

    st = sub.add_parser("streams", help="JetStream provisioning")
    st_sub = st.add_subparsers(dest="action", required=True)
    apply_p = st_sub.add_parser(
        "apply", help="create missing streams and consumers; change nothing else"
    )
    apply_p.add_argument(
        "--nats-url",
        help="default: VOICEMESH_NATS_URL(S); credentials and TLS from VOICEMESH_NATS_*",
    )
    apply_p.add_argument("--tenant", action="append", help="make per-tenant consumers (repeatable)")
    apply_p.add_argument("--replicas", type=int, default=1)
    apply_p.set_defaults(run=lambda a: asyncio.run(_streams_apply(a)))

    dlq.add_commands(sub)

    docs = sub.add_parser("docs", help="export JSON Schemas of every wire event")
    docs.add_argument("--out", default="docs/schemas")
    docs.set_defaults(run=_docs)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="action", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="verify the hash chain; names the first changed, removed or reordered row, "
        "and with --public-key the rows a signed head contradicts",
    )
    verify.add_argument("--tenant", help="verify one tenant's chain (default: every tenant)")
    verify.add_argument("--database-url", help="the audit database (default: DATABASE_URL)")
    verify.add_argument("--public-key", help="PEM of the audit signing key's public half")
    verify.add_argument("--signed-heads", help="a file of signed heads, one JSON head a line")
    verify.add_argument(
        "--heads-from-nats",
        action="store_true",
        help="every signed head in the EVENTS stream (VOICEMESH_NATS_*, admin credentials)",
    )
    verify.set_defaults(run=_audit)

    raw = sys.argv[1:] if argv is None else argv
    if raw[:2] == ["audit", "verify"] and raw[2:3] not in (["-h"], ["--help"]):
        raise SystemExit(_audit(argparse.Namespace(rest=raw[2:])))
    if raw[:1] == ["phone"]:
        from voicemesh.phone.__main__ import main as phone_main

        phone_main(raw[1:])
    sub.add_parser("phone", help="a simulated iPhone (see voicemesh phone --help)", add_help=False)
    if raw[:1] == ["call"]:
        from voicemesh.cli.call import main as call_main

        raise SystemExit(call_main(raw[1:]))
    sub.add_parser(
        "call",
        help="call the agent as the simulated phone (see voicemesh call --help)",
        add_help=False,
    )

    args = parser.parse_args(argv)
    raise SystemExit(args.run(args))


if __name__ == "__main__":
    main()
