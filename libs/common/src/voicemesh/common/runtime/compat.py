"""One fix to a library this mesh runs on, applied by ``voicemesh.common.runtime.bus`` on import.

nats-py 2.16 (nats-io/nats.py#934) can end ``PullSubscription.fetch`` in the builtin
``TimeoutError`` where it otherwise raises ``nats.errors.TimeoutError``: when its no-wait
probe finds nothing and the deadline has passed before the lingering request. FastStream
0.7's pull loops catch only the nats-py class, so the builtin one escapes: the loop's task
dies and is restarted, and the batch loop drops the messages it had already fetched for
the batch (unacked, they come back only after the consumer's ack wait, 30 s later). The
audit trail of a call then lags its end by half a minute.

``fetch`` is wrapped to raise the nats-py class for any timeout, which is what both
libraries document; nothing else about it changes.
"""

from __future__ import annotations

import functools
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

__all__ = ["patch_fetch_timeout"]


def patch_fetch_timeout() -> None:
    """Make every pull ``fetch`` time out with ``nats.errors.TimeoutError``; idempotent."""
    pull = JetStreamContext.PullSubscription
    if getattr(pull.fetch, "_voicemesh_timeout", False):
        return
    fetch = pull.fetch

    @functools.wraps(fetch)
    async def fetch_with_nats_timeout(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fetch(self, *args, **kwargs)
        except NatsTimeoutError:
            raise
        except TimeoutError as exc:
            raise NatsTimeoutError from exc

    fetch_with_nats_timeout._voicemesh_timeout = True  # type: ignore[attr-defined]
    pull.fetch = fetch_with_nats_timeout  # type: ignore[method-assign]
