"""Tool errors: what a handler raises and what the caller sees (a typed ``ToolError``)."""

from __future__ import annotations

from pydantic import ValidationError

from voicemesh.common.contracts.errors import (
    DeadlineExceeded,
    InvalidMessage,
    MeshError,
    NotFound,
    TransientError,
    Unauthorized,
    UnknownTenant,
    describe_validation_error,
)
from voicemesh.common.contracts.events import ToolError, ToolErrorCode

__all__ = ["ToolCallError", "ToolFailure", "error_for"]


class ToolFailure(MeshError):
    """A tool refusing a call with a specific code (``slot_taken``, ``forbidden`` …)."""

    def __init__(self, code: ToolErrorCode, message: str) -> None:
        super().__init__(message)
        self.tool_code = code
        self.code = code.value


class ToolCallError(MeshError):
    """``ToolClient.call_typed`` got an error result; ``error`` says which."""

    def __init__(self, error: ToolError) -> None:
        super().__init__(f"{error.code.value}: {error.message}")
        self.error = error


def error_for(exc: BaseException) -> ToolError:
    """The typed error a caller sees for ``exc``; internals are never described."""
    if isinstance(exc, ToolFailure):
        return ToolError(code=exc.tool_code, message=_short(exc))
    if isinstance(exc, ToolCallError):  # another tool's answer, passed on as it was given
        return exc.error
    if isinstance(exc, ValidationError):
        return ToolError(code=ToolErrorCode.INVALID, message=_validation_message(exc))
    if isinstance(exc, TimeoutError | DeadlineExceeded):
        return ToolError(code=ToolErrorCode.TIMEOUT, message=_short(exc) or "timed out")
    if isinstance(exc, InvalidMessage):
        return ToolError(code=ToolErrorCode.INVALID, message=_short(exc))
    if isinstance(exc, NotFound):
        return ToolError(code=ToolErrorCode.NOT_FOUND, message=_short(exc))
    if isinstance(exc, Unauthorized | UnknownTenant):
        return ToolError(code=ToolErrorCode.FORBIDDEN, message=_short(exc))
    if isinstance(exc, TransientError):
        return ToolError(code=ToolErrorCode.UNAVAILABLE, message=_short(exc))
    if isinstance(exc, MeshError) and exc.code in ToolErrorCode.__members__.values():
        return ToolError(code=ToolErrorCode(exc.code), message=_short(exc))
    return ToolError(code=ToolErrorCode.INTERNAL, message="internal error")


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:1024]


def _validation_message(exc: ValidationError) -> str:
    # Field paths and messages only: argument values may be PHI and never echo back.
    return describe_validation_error(exc)[:1024]
