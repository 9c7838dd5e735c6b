"""The nats-py fetch timeout fix (``voicemesh.common.runtime.compat``), on a real JetStream.

The race behind it, made certain: the server's 408 for the fetch's first pull request
arrives just before the client's own timer would fire (``next_msg`` waits a little longer
than asked), and by then the deadline has passed (``_time_until`` says so). nats-py 2.16
then raises the builtin ``TimeoutError``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from faststream.nats import JStream, PullSub
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

import voicemesh.common  # noqa: F401  # applies the fix
from voicemesh.common.runtime.connection import make_nats_broker
from voicemesh.testkit.fixtures import wait_until
from voicemesh.testkit.mesh import nats_settings


@pytest.fixture
def deadline_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    next_msg = Subscription.next_msg

    async def a_little_longer(self: Subscription, timeout: float | None = 1.0) -> Msg:
        return await next_msg(self, timeout=None if timeout is None else timeout + 0.5)

    monkeypatch.setattr(Subscription, "next_msg", a_little_longer)
    monkeypatch.setattr(
        JetStreamContext, "_time_until", classmethod(lambda cls, timeout, start: 0.0)
    )


async def test_a_fetch_past_its_deadline_raises_the_nats_timeout(
    nats: NatsClient, unique: Callable[[str], str], deadline_passed: None
) -> None:
    js = nats.jetstream()
    name = unique("compat")
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    sub = await js.pull_subscribe(f"{name}.>", durable=name, stream=name)
    # What nats-py itself does on this path; when this fails, upstream has fixed it and
    # voicemesh.common.runtime.compat can go.
    unwrapped = JetStreamContext.PullSubscription.fetch.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(TimeoutError) as raised:
        await unwrapped(sub, batch=5, timeout=1.0)
    assert not isinstance(raised.value, NatsTimeoutError)
    with pytest.raises(NatsTimeoutError):
        await sub.fetch(batch=5, timeout=1.0)
    await sub.unsubscribe()


async def test_a_faststream_batch_consumer_keeps_a_batch_fetched_before_the_timeout(
    nats: NatsClient, nats_url: str, unique: Callable[[str], str], deadline_passed: None
) -> None:
    name = unique("compat")
    js = nats.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    for n in range(3):
        await js.publish(f"{name}.event", f"event-{n}".encode())

    broker = make_nats_broker(nats_settings(nats_url), service="compat", graceful_timeout=5.0)
    batches: list[list[str]] = []

    @broker.subscriber(
        f"{name}.>",
        stream=JStream(name, declare=False),
        durable=name,
        pull_sub=PullSub(batch_size=10, timeout=2.0, batch=True),
    )
    async def on_batch(bodies: list[str]) -> None:
        batches.append(bodies)

    await broker.start()
    try:
        # Without the fix the second fetch of the batch kills the loop and the three
        # messages wait out the consumer's 30 s ack wait.
        await wait_until(lambda: sum(len(b) for b in batches) >= 3, 10, what="the batch")
    finally:
        await broker.stop()
    assert sorted(b for batch in batches for b in batch) == ["event-0", "event-1", "event-2"]
