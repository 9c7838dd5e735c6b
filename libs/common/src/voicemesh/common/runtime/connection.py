"""The one way a voicemesh process opens a NATS connection.

Every connection (a service's FastStream broker, the gateway's and the agent's media
connections, push's and audit's pull lanes, the CLI, the simulated phone, the test kit)
goes through ``connect``, so each gets the same credentials, TLS, per-tenant inbox prefix,
connection name and reconnect policy. ``tests/test_layers.py`` fails if anything else
calls ``nats.connect`` or builds a ``NatsBroker``.

Credentials, in order: a ``.creds`` file, a user and password, a token. A per-tenant
process (``tenant`` not ``*``) gets the inbox prefix ``_INBOX_<tenant>``: its NATS user may
read only its own inboxes (``deploy/k8s/nats_auth.py``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
from faststream.nats import NatsBroker
from nats.aio.client import Client

from voicemesh.common.contracts import subjects
from voicemesh.common.runtime.settings import NatsSettings

__all__ = ["MeshBroker", "connect", "connection_options", "make_nats_broker"]

log = logging.getLogger(__name__)

#: Seconds between reconnect attempts for the brokers; media connections ask for less.
RECONNECT_WAIT_S = 1.0
CONNECT_TIMEOUT_S = 3.0

Callback = Callable[..., Awaitable[None]]


def _tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    wants_tls = any(url.startswith("tls://") for url in settings.nats_urls)
    if not (wants_tls or settings.nats_tls_ca_file or settings.nats_tls_cert_file):
        return None
    context = ssl.create_default_context(cafile=settings.nats_tls_ca_file)
    if settings.nats_tls_cert_file:
        context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
    return context


def connection_options(
    settings: NatsSettings,
    *,
    name: str,
    reconnect_time_wait: float = RECONNECT_WAIT_S,
) -> dict[str, Any]:
    """The nats-py ``connect`` keyword arguments for one connection of this process."""
    options: dict[str, Any] = {
        "servers": list(settings.nats_urls),
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": reconnect_time_wait,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "inbox_prefix": subjects.inbox_prefix(settings.tenant),
    }
    if settings.nats_creds_file:
        options["user_credentials"] = settings.nats_creds_file
    elif settings.nats_user and settings.nats_password:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password.get_secret_value()
    elif settings.nats_token:
        options["token"] = settings.nats_token.get_secret_value()
    if (context := _tls_context(settings)) is not None:
        options["tls"] = context
    return options


async def connect(
    settings: NatsSettings,
    *,
    name: str,
    reconnect_time_wait: float = RECONNECT_WAIT_S,
    **callbacks: Callback,
) -> Client:
    """Open a NATS connection for this process (``callbacks``: nats-py's ``*_cb`` hooks)."""
    options = connection_options(settings, name=name, reconnect_time_wait=reconnect_time_wait)
    options.update(callbacks)
    return await nats.connect(**options)


class MeshBroker(NatsBroker):
    """A FastStream ``NatsBroker`` whose connection is opened by ``connect``."""

    def __init__(self, settings: NatsSettings, *, name: str, **kwargs: Any) -> None:
        super().__init__(settings.nats_urls, name=name, **kwargs)
        self._mesh_settings = settings
        self._mesh_name = name

    async def _connect(self) -> Client:
        connection = await connect(self._mesh_settings, name=self._mesh_name)
        self.config.connect(connection)
        return connection

    async def start(self) -> None:
        """Start the subscribers, then wait until the server has registered them.

        nats-py sends SUB without waiting; the round trip of ``flush`` means a request sent
        on any other connection after ``start`` returns finds this service's responders.
        """
        await super().start()
        if self._connection is not None:
            await self._connection.flush()


def make_nats_broker(
    settings: NatsSettings,
    *,
    service: str,
    graceful_timeout: float,
    middlewares: Sequence[Any] = (),
) -> MeshBroker:
    """The FastStream broker of ``service``, connected through ``connect``."""
    return MeshBroker(
        settings,
        name=f"voicemesh-{service}",
        graceful_timeout=graceful_timeout,
        middlewares=list(middlewares),
        logger=logging.getLogger(f"voicemesh.{service}.bus"),
        log_level=logging.DEBUG,
    )
