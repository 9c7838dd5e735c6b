"""Ids: new ones, ids derived from what they name, and JetStream message ids.

One scheme for every service. A derived id is a digest of the tenant and the parts that
name the event (``derived_id("acme", call_id, "missed-sms")``): the same inputs give the
same id after a crash and a retry, so JetStream drops the second publish, and no input
length can push it past the 64-character limit of ``event_id``. A JetStream message id
(``Nats-Msg-Id``) carries the tenant too: JetStream deduplicates per stream across all
tenants, so one tenant's event can never deduplicate away another's.
"""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["DERIVED_ID_LENGTH", "derived_id", "message_id", "new_id"]

#: Hex digits of a derived id: 160 bits, within ``event_id``'s 64 characters.
DERIVED_ID_LENGTH = 40


def new_id() -> str:
    """A fresh random id (32 hex digits): call ids and event ids of new facts."""
    return uuid.uuid4().hex


def derived_id(tenant: str, *parts: str) -> str:
    """The id of the fact that ``parts`` name within ``tenant``; stable across retries."""
    if not parts:
        raise ValueError("a derived id needs at least one part besides the tenant")
    material = "\x00".join((tenant, *parts)).encode()
    return hashlib.sha256(material).hexdigest()[:DERIVED_ID_LENGTH]


def message_id(tenant: str, event_id: str) -> str:
    """The ``Nats-Msg-Id`` of an event: tenant-scoped, so dedup never crosses tenants."""
    return f"{tenant}:{event_id}"
