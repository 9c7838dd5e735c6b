"""The voicemesh error tree. Every error a service raises on purpose is a ``MeshError``.

::

    MeshError
    ├── TransientError          retry: the same message may succeed later (NAK with backoff)
    │   ├── UnavailableError    a dependency (database, Redis, provider) cannot be reached
    │   └── DeadlineExceeded    a call to a dependency took longer than its timeout
    └── PermanentError          dead-letter: retrying the same message can never succeed
        ├── InvalidMessage      malformed payload, wrong schema, bad subject token
        ├── UnknownTenant       the tenant is not served here
        ├── NotFound            the thing the message refers to does not exist
        ├── Conflict            the message contradicts current state (slot taken)
        └── Unauthorized        credentials missing, forged, expired or for another tenant

Vendor errors are translated once, at the boundary, with ``raise ... from exc``.
``category`` decides what the bus does with a failed message.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ValidationError

__all__ = [
    "Category",
    "Conflict",
    "DeadlineExceeded",
    "InvalidMessage",
    "MeshError",
    "NotFound",
    "PermanentError",
    "TransientError",
    "Unauthorized",
    "UnavailableError",
    "UnknownTenant",
    "category_of",
    "describe_validation_error",
]


class Category(StrEnum):
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


class MeshError(Exception):
    """Root of every error voicemesh raises on purpose."""

    category: Category = Category.DEAD_LETTER
    code: str = "internal"


class TransientError(MeshError):
    category = Category.RETRY
    code = "unavailable"
    #: how long the failing dependency asked us to wait (HTTP ``Retry-After``), if it said
    retry_after_s: float | None = None


class UnavailableError(TransientError):
    code = "unavailable"


class DeadlineExceeded(TransientError):
    code = "timeout"


class PermanentError(MeshError):
    category = Category.DEAD_LETTER
    code = "invalid"


class InvalidMessage(PermanentError):
    code = "invalid"


class UnknownTenant(PermanentError):
    code = "unknown_tenant"


class NotFound(PermanentError):
    code = "not_found"


class Conflict(PermanentError):
    code = "conflict"


class Unauthorized(PermanentError):
    code = "unauthorized"


def category_of(exc: BaseException) -> Category:
    """What to do with a message whose handler raised ``exc``.

    Errors outside the tree are treated as transient: an unexpected bug or outage should
    be retried a bounded number of times, then dead-lettered, never silently dropped.
    """
    if isinstance(exc, MeshError):
        return exc.category
    return Category.RETRY


def describe_validation_error(exc: ValidationError, *, limit: int = 5) -> str:
    """A validation failure in one line: ``field.path: message`` for the first ``limit``."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:limit]
    ]
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more
