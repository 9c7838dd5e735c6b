"""How the command line reaches NATS: through the runtime's ``connect``, with
``VOICEMESH_NATS_*`` from the environment as a service has them (user and password, token,
``.creds`` file, TLS files, ``VOICEMESH_TENANT`` for the inbox prefix), and a
``--nats-url`` flag or the local stack's URL over the environment's servers.
"""

from __future__ import annotations

import asyncio
import sys

from nats.aio.client import Client

from voicemesh.common.runtime.connection import connect
from voicemesh.common.runtime.settings import NatsSettings

__all__ = ["CONNECT_WAIT_S", "nats_settings", "open_nats"]

#: How long a command waits for NATS (a Job may start before the servers are ready);
#: the runtime's connections themselves retry forever.
CONNECT_WAIT_S = 60.0


def nats_settings(url: str | None = None) -> NatsSettings:
    """This process's NATS settings; ``url`` (comma-separated) replaces the environment's."""
    if url:
        return NatsSettings(nats_urls=[u.strip() for u in url.split(",") if u.strip()])
    return NatsSettings()


async def open_nats(url: str | None, *, name: str, wait_s: float = CONNECT_WAIT_S) -> Client:
    """A connection named ``name``; ``TimeoutError`` when NATS is not reachable in time."""
    settings = nats_settings(url)
    reported: set[str] = set()

    async def on_error(exc: Exception) -> None:
        # nats-py prints a traceback per failed attempt; say each distinct problem once.
        problem = f"{type(exc).__name__}: {exc}"
        if problem not in reported:
            reported.add(problem)
            print(f"{name}: NATS: {problem}; retrying", file=sys.stderr)

    try:
        return await asyncio.wait_for(connect(settings, name=name, error_cb=on_error), wait_s)
    except TimeoutError:
        servers = ", ".join(settings.nats_urls)
        raise TimeoutError(f"could not connect to NATS at {servers} in {wait_s:g}s") from None
