"""``apns._VoipProtocol`` subclasses private aioapns internals; this fails the day they change.

The subclass sets ``APNS_SERVER``/``APNS_PORT``/``INACTIVITY_TIME``, replaces the pool's
``protocol_class``, and on a timed-out request edits the protocol's private ``requests``,
``request_statuses`` and ``request_streams`` maps, resets the HTTP/2 stream on ``conn`` and
releases a slot of ``free_channels``. It was written against the exact aioapns pinned in
``pyproject.toml``; a different version, or a changed source of any of these, must be read
again before the pin moves.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from aioapns.connection import APNsTLSClientProtocol

from voicemesh.push.apns import _VoipProtocol
from voicemesh.testkit.pins import changed_sources, pinned_exactly

PINNED = "4.0"

#: sha256 (first 16 hex digits) of the source of everything the subclass depends on, as
#: read for aioapns 4.0. To update: read the new source, adapt apns.py, then the digest.
SUBCLASSED_INTERNALS = {
    # free_channels, flush, conn and the stream-ended release the subclass mirrors.
    "aioapns.connection:H2Protocol": "3ee9c74802ee287c",
    "aioapns.connection:ChannelPool": "4e442b7445841a50",
    # requests / request_statuses / request_streams, send_notification, connection_lost.
    "aioapns.connection:APNsBaseClientProtocol": "91198d9562b22d0c",
    "aioapns.connection:APNsTLSClientProtocol": "0351136cd6bf5ba6",
    # The pool's protocol_class, read when it connects (host and port come from it).
    "aioapns.connection:APNsBaseConnectionPool.__init__": "44373f02f1b7473e",
    "aioapns.connection:APNsKeyConnectionPool.create_connection": "5e2d72d97d3c854a",
    "aioapns.connection:APNsCertConnectionPool.create_connection": "574f26419612abbb",
    # Builds the pool (client.pool) and reads the running loop.
    "aioapns.client:APNs.__init__": "bf87b452d5eebf5a",
}


def test_aioapns_is_pinned_exactly_and_installed_at_the_pin() -> None:
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    assert pinned_exactly(pyproject, "aioapns") == PINNED


def test_the_internals_the_subclass_relies_on_are_unchanged() -> None:
    changed = changed_sources(SUBCLASSED_INTERNALS)
    assert not changed, f"aioapns internals changed under apns._VoipProtocol: {changed}"
    # The overridden methods still exist, with the signatures the overrides assume.
    base = APNsTLSClientProtocol
    assert _VoipProtocol.__mro__[1] is base
    for name in ("send_notification", "connection_lost"):
        ours = inspect.signature(getattr(_VoipProtocol, name), eval_str=True)
        assert inspect.signature(getattr(base, name), eval_str=True) == ours, name
