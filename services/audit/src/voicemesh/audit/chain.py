"""The audit hash chain: canonical JSON, row hashes and the fixed timestamp format (the
runtime's ``iso_timestamp``, re-exported here because the hashes depend on it).

Each row's hash is SHA-256 over the canonical JSON of its content plus the previous row's
hash, so changing, removing or reordering a row breaks the chain from that row on. The
row's position (``seq``) is not hashed: the ``prev_hash`` links define the order, which is
what lets ``verify`` tell a reordered row from a changed one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from voicemesh.common.runtime.db import iso_timestamp

__all__ = [
    "GENESIS",
    "ChainEntry",
    "canonical_json",
    "iso_timestamp",
    "row_hash",
]

#: ``prev_hash`` of a tenant's first row.
GENESIS = "0" * 64

#: Bumped if the hashed fields ever change, so old chains still verify with their rules.
HASH_VERSION = 1


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ChainEntry:
    """An event as the audit log records it, before it has a place in the chain."""

    tenant: str
    event_id: str
    event_type: str
    call_id: str | None
    source: str
    subject: str
    occurred_at: str
    payload: str


def row_hash(entry: ChainEntry, *, recorded_at: str, prev_hash: str) -> str:
    """The hash a row with this content, recorded at ``recorded_at``, after ``prev_hash`` has."""
    content = {
        "v": HASH_VERSION,
        "tenant": entry.tenant,
        "event_id": entry.event_id,
        "type": entry.event_type,
        "call_id": entry.call_id,
        "source": entry.source,
        "subject": entry.subject,
        "occurred_at": entry.occurred_at,
        "recorded_at": recorded_at,
        "payload": entry.payload,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()
