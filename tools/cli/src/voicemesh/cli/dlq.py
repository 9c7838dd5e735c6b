"""``voicemesh dlq list`` and ``voicemesh dlq replay``: an operator's view of dead letters.

Both connect like ``voicemesh streams apply`` (``VOICEMESH_NATS_*`` from the environment,
the admin user in a cluster). ``list`` prints one line per dead letter, without its payload
unless ``--payload`` is given. ``replay`` republishes the original payload to its original
subject (every consumer of that subject sees it again; handlers are idempotent by event
id) and removes the entry; it refuses payloads that are not the original (masked,
truncated or re-encoded) and exits 1 if it refused or missed any.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from voicemesh.cli.bus import open_nats
from voicemesh.common.runtime import dlq

__all__ = ["add_commands"]


async def _list(args: argparse.Namespace) -> int:
    client = await open_nats(args.nats_url, name="voicemesh-dlq")
    try:
        found = await dlq.read(client.jetstream(), args.tenant)
    finally:
        await client.drain()
    print("ID\tTIME\tSOURCE\tSUBJECT\tCONSUMER\tDELIVERIES\tREASON")
    for stored in found:
        e = stored.entry
        when = e.occurred_at.isoformat(timespec="seconds")
        reason = " ".join(e.reason.split())
        print(
            f"{stored.seq}\t{when}\t{e.source}\t{e.subject}\t{e.consumer}\t{e.deliveries}\t{reason}"
        )
        if args.payload:
            masked = " (redacted)" if stored.redacted else ""
            print(f"\tpayload{masked}: {e.payload}")
    return 0


async def _replay(args: argparse.Namespace) -> int:
    wanted = None if args.all else set(args.id)
    client = await open_nats(args.nats_url, name="voicemesh-dlq")
    replayed = failed = 0
    try:
        js = client.jetstream()
        found = await dlq.read(js, args.tenant, ids=wanted)
        for missing in sorted((wanted or set()) - {s.seq for s in found}):
            print(f"no dead letter {missing} for tenant {args.tenant}", file=sys.stderr)
            failed += 1
        for stored in found:
            try:
                await dlq.replay(js, stored)
            except ValueError as exc:
                print(f"refused: {exc}", file=sys.stderr)
                failed += 1
                continue
            replayed += 1
            print(f"replayed {stored.seq} to {stored.entry.subject}")
    finally:
        await client.drain()
    print(f"replayed {replayed}, refused or missing {failed}")
    return 1 if failed else 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``dlq`` command and its actions, on the top-level parser's subcommands."""
    parser = sub.add_parser("dlq", help="dead letters: list and replay (operator credentials)")
    actions = parser.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tenant", required=True, help="whose dead letters")
        p.add_argument(
            "--nats-url",
            help="default: VOICEMESH_NATS_URL(S); credentials and TLS from VOICEMESH_NATS_*",
        )

    listing = actions.add_parser("list", help="one line per dead letter, oldest first")
    common(listing)
    listing.add_argument("--payload", action="store_true", help="print each stored payload too")
    listing.set_defaults(run=lambda a: asyncio.run(_list(a)))

    replay = actions.add_parser(
        "replay", help="republish to the original subject and remove from the DLQ"
    )
    common(replay)
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", help="a dead letter's ID (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter of the tenant")
    replay.set_defaults(run=lambda a: asyncio.run(_replay(a)))
