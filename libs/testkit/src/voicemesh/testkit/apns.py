"""The push service's APNs credentials directory, written for a test's own keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

__all__ = ["TokenKey", "write_credentials"]


class TokenKey(Protocol):
    """An APNs ``.p8`` token key (``voicemesh.apnssim.certs.ProviderKeyPair`` is one)."""

    @property
    def key_id(self) -> str: ...

    @property
    def team_id(self) -> str: ...

    @property
    def private_pem(self) -> str: ...


def write_credentials(directory: Path, tenant: str, key: TokenKey, bundle_id: str) -> Path:
    """``<tenant>.p8`` and ``<tenant>.json`` in ``directory``, as push's
    ``VOICEMESH_APNS_CREDENTIALS_DIR`` holds them; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / f"{tenant}.p8"
    private.touch(mode=0o600)  # a private key: never readable by others, even briefly
    private.write_text(key.private_pem)
    entry = {
        "key_id": key.key_id,
        "team_id": key.team_id,
        "key_file": f"{tenant}.p8",
        "bundle_id": bundle_id,
    }
    (directory / f"{tenant}.json").write_text(json.dumps(entry))
    return directory
