"""The sms service's tool: queue a text."""

from __future__ import annotations

from pydantic import Field

from voicemesh.common.contracts.tools.base import (
    IdempotencyKey,
    Phone,
    ToolArgs,
    ToolOutput,
)

__all__ = [
    "SendSmsArgs",
    "SendSmsResult",
]


class SendSmsArgs(ToolArgs):
    to: Phone
    body: str = Field(min_length=1, max_length=1600)
    purpose: str = Field(default="agent", max_length=64)
    idempotency_key: IdempotencyKey


class SendSmsResult(ToolOutput):
    idempotency_key: str
    queued: bool
