"""voicemesh audit. Audit service: an append-only, hash-chained record of every event."""

from voicemesh.audit.app import create_app
from voicemesh.audit.settings import AuditSettings

__all__ = ["AuditSettings", "create_app"]
