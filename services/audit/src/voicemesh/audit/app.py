"""The audit service application: ``create_app(settings)`` wires it, ``__main__`` runs it.

Three durable consumers (``audit-calls``, ``audit-events``, ``audit-sms``) feed one chain
writer; the HTTP API reads the log; with a signing key, ``HeadSigner`` signs and exports
each moved chain head. The database opens before the broker starts and closes after it
has drained, so no consumed event is left without its transaction.
"""

from __future__ import annotations

import logging

from voicemesh.audit.anchor import HeadSigner, load_private_key
from voicemesh.audit.api import audit_router
from voicemesh.audit.ingest import AuditIngest
from voicemesh.audit.settings import AuditSettings
from voicemesh.audit.store import AuditStore, ChainWriter
from voicemesh.common import MeshService
from voicemesh.common.contracts.streams import consumer
from voicemesh.common.runtime.auth import ApiKeys
from voicemesh.common.runtime.dlq import DlqDepth

__all__ = ["CONSUMER_PURPOSES", "create_app"]

log = logging.getLogger(__name__)

CONSUMER_PURPOSES = ("calls", "events", "sms")
DESCRIPTION = "Audit service: an append-only, hash-chained record of every event."


def create_app(settings: AuditSettings) -> MeshService:
    service = MeshService("audit", settings, description=DESCRIPTION)
    store = AuditStore(service.database())
    writer = ChainWriter(store)
    ingest = AuditIngest(
        service.broker,
        writer,
        service.tenants,
        service.delivery,
        batch_size=settings.batch_size,
        batch_timeout_s=settings.batch_timeout_s,
    )
    for purpose in CONSUMER_PURPOSES:
        ingest.subscribe(consumer("audit", purpose), settings.tenant)

    @service.on_startup
    async def start_writer() -> None:
        writer.start()

    service.on_shutdown(writer.stop)

    if (pem := settings.signing_key_pem()) is not None:
        tenants = None if settings.tenant == "*" else [settings.tenant]
        service.own(
            HeadSigner(
                store.db,
                service.events,
                load_private_key(pem),
                tenants=tenants,
                interval_s=settings.head_interval_s,
            )
        )
    else:
        log.warning("no audit signing key: chain heads are not signed or exported")

    # The DLQ depth of every tenant this process audits (voicemesh_dlq_depth{tenant}).
    depth = DlqDepth(
        lambda: service.broker.connection.jetstream(),
        [settings.tenant] if settings.tenant != "*" else service.tenants.ids(),
        service.telemetry.registry,
    )
    service.faststream.after_startup(depth.start)
    service.faststream.on_shutdown(depth.stop)

    service.http.include_router(
        audit_router(store, ApiKeys.from_settings(settings), service.tenants)
    )
    return service
