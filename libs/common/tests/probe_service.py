"""A minimal voicemesh service used by the foundation's process-level tests.

It is a real ``MeshService`` with one durable pull consumer on the CALLS stream. For each
lifecycle event it appends ``<event_id> <delivery>`` to ``PROBE_RECORD``, then holds for
``PROBE_HOLD_S`` seconds before returning (and so before the ack), which gives a test a
window to SIGKILL it with the message delivered but unacknowledged.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

from faststream import Context
from faststream.nats.message import NatsMessage

from voicemesh.common import (
    LifecycleEvent,
    MeshService,
    ServiceSettings,
    run,
    setup_process,
)
from voicemesh.common.contracts.streams import ConsumerSpec
from voicemesh.common.runtime.bus import subscribe_durable


def create_app(settings: ServiceSettings) -> MeshService:
    service = MeshService("probe", settings, description="foundation test probe")
    record = Path(os.environ["PROBE_RECORD"])
    hold = float(os.environ.get("PROBE_HOLD_S", "0"))
    spec = ConsumerSpec(
        "probe",
        os.environ["PROBE_PURPOSE"],
        "CALLS",
        "lifecycle",
        ack_wait_s=float(os.environ.get("PROBE_ACK_WAIT_S", "30")),
    )
    tenant = settings.tenant

    @subscribe_durable(service.broker, spec, tenant, fetch_timeout=0.5)
    async def on_lifecycle(
        event: LifecycleEvent, msg: Annotated[NatsMessage, Context("message")]
    ) -> None:
        delivery = msg.raw_message.metadata.num_delivered
        with record.open("a") as fh:
            fh.write(f"{event.event_id} {delivery} {event.type}\n")
            fh.flush()
            os.fsync(fh.fileno())
        if hold:
            await asyncio.sleep(hold)

    return service


if __name__ == "__main__":
    settings = ServiceSettings(service_name="probe")
    setup_process("probe", settings)
    run(create_app(settings))
