"""What every tool's argument and result models share: field types and the two bases."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EMAIL_PATTERN",
    "PHONE_PATTERN",
    "Email",
    "Id",
    "IdempotencyKey",
    "Name",
    "Phone",
    "ToolArgs",
    "ToolOutput",
]

PHONE_PATTERN = r"^\+[1-9][0-9]{6,14}$"
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,63}$"
Phone = Annotated[str, Field(pattern=PHONE_PATTERN)]
Email = Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=128)]


class ToolArgs(BaseModel):
    """Base of every tool's argument model: strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolOutput(BaseModel):
    """Base of every tool's result model."""

    model_config = ConfigDict(frozen=True, extra="forbid")
