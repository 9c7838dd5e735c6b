"""The caller corpus (``tests/corpus/calls/*.yaml``): scripted calls written apart from the
profiles, validated against the models here and loaded by split and vertical.

``tests/corpus/README.md`` says how the calls were written and what each field means.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "CORPUS_DIR",
    "REFERENCE_NOW",
    "SNRS",
    "VERTICALS",
    "VOICES",
    "CorpusCall",
    "CorpusError",
    "CorpusFile",
    "Outcome",
    "Turn",
    "load_corpus",
    "load_files",
]

CORPUS_DIR = Path(__file__).resolve().parents[5] / "tests" / "corpus" / "calls"
#: every relative day and time in the corpus is resolved against this moment
REFERENCE_NOW = datetime(2026, 12, 10, 9, 0, tzinfo=ZoneInfo("America/New_York"))
VERTICALS = (
    "real_estate",
    "healthcare",
    "behavioral_health",
    "legal",
    "salon",
    "insurance",
)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-us+m3", "en-gb+f4")
#: the runner plays every call clean (None) and mixed with noise at these SNRs (dB)
SNRS: tuple[int | None, ...] = (None, 20, 10)

Split = Literal["tune", "heldout"]
Vertical = Literal["real_estate", "healthcare", "behavioral_health", "legal", "salon", "insurance"]
SlotKey = Literal["choice", "when", "incident", "name", "address", "phone", "policy", "confirm"]
HandoffReason = Literal["crisis", "emergency", "threat", "request", "complaint"]

_SLOT_FORMATS: dict[str, re.Pattern[str]] = {
    "when": re.compile(r"^(\d{4}-\d{2}-\d{2}(T\d{2}:\d{2})?|\d{2}:\d{2})$"),
    "incident": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
    "phone": re.compile(r"^\+[1-9]\d{7,14}$"),
    "policy": re.compile(r"^\d{4,12}$"),
}


class CorpusError(ValueError):
    """A corpus file that does not match the schema, named with its path."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_slots(slots: dict[str, str | bool]) -> dict[str, str | bool]:
    for key, value in slots.items():
        if key == "confirm":
            if not isinstance(value, bool):
                raise ValueError(f"slot 'confirm' must be true or false, not {value!r}")
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"slot {key!r} must be a non-empty string, not {value!r}")
        pattern = _SLOT_FORMATS.get(key)
        if pattern is not None and not pattern.match(value):
            raise ValueError(f"slot {key!r} has a malformed value {value!r}")
    return slots


class Turn(_Model):
    """One caller line, what it alone tells the agent, and whether it is a crisis."""

    say: str = Field(min_length=1)
    slots: dict[SlotKey, str | bool] = Field(default_factory=dict)
    crisis: bool = False

    @field_validator("slots")
    @classmethod
    def _slot_values(cls, slots: dict[str, str | bool]) -> dict[str, str | bool]:
        return _check_slots(slots)


class Outcome(_Model):
    """Where the call should end: a booking, a claim, a listing answered or a hand-off."""

    kind: Literal["booking", "claim", "listing", "handoff"]
    reason: HandoffReason | None = None
    slots: dict[SlotKey, str | bool] = Field(default_factory=dict)

    @field_validator("slots")
    @classmethod
    def _slot_values(cls, slots: dict[str, str | bool]) -> dict[str, str | bool]:
        return _check_slots(slots)

    @model_validator(mode="after")
    def _reason_only_for_handoff(self) -> Outcome:
        if (self.kind == "handoff") != (self.reason is not None):
            raise ValueError("a handoff needs a reason, and only a handoff has one")
        return self


class CorpusCall(_Model):
    """One scripted call: who speaks it, in which half of the split, and how it should end."""

    id: str = Field(pattern=r"^[a-z_]+-\d{2,}$")
    vertical: Vertical
    split: Split
    voice: str
    rate: int = Field(ge=140, le=200)
    turns: list[Turn] = Field(min_length=1)
    outcome: Outcome

    @field_validator("turns", mode="before")
    @classmethod
    def _plain_lines(cls, turns: Any) -> Any:
        if isinstance(turns, list):
            return [{"say": turn} if isinstance(turn, str) else turn for turn in turns]
        return turns

    @model_validator(mode="after")
    def _consistent(self) -> CorpusCall:
        if not self.id.startswith(f"{self.vertical}-"):
            raise ValueError(f"call id {self.id!r} does not start with its vertical")
        if self.voice not in VOICES:
            raise ValueError(f"call {self.id}: unknown voice {self.voice!r}")
        if self.has_crisis and self.outcome.reason not in ("crisis", "emergency", "threat"):
            raise ValueError(f"call {self.id}: a crisis turn must end in a safety hand-off")
        return self

    @property
    def has_crisis(self) -> bool:
        return any(turn.crisis for turn in self.turns)


class CorpusFile(_Model):
    """One vertical's file: the choices its callers pick from and its calls."""

    vertical: Vertical
    choices: list[str] = Field(min_length=1)
    calls: list[CorpusCall]

    @model_validator(mode="before")
    @classmethod
    def _vertical_into_calls(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("calls"), list):
            vertical = data.get("vertical")
            data = {
                **data,
                "calls": [
                    {"vertical": vertical, **call} if isinstance(call, dict) else call
                    for call in data["calls"]
                ],
            }
        return data

    @model_validator(mode="after")
    def _choices_known(self) -> CorpusFile:
        for call in self.calls:
            for slots in [call.outcome.slots, *(turn.slots for turn in call.turns)]:
                choice = slots.get("choice")
                if choice is not None and choice not in self.choices:
                    raise ValueError(f"call {call.id}: choice {choice!r} is not in choices")
        return self


@cache
def _load_directory(directory: Path) -> tuple[CorpusFile, ...]:
    files = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            files.append(CorpusFile.model_validate(yaml.safe_load(path.read_text("utf-8"))))
        except (ValidationError, yaml.YAMLError) as exc:
            raise CorpusError(f"{path}: {exc}") from exc
    if not files:
        raise CorpusError(f"no corpus files in {directory}")
    return tuple(files)


def load_files(directory: Path = CORPUS_DIR) -> tuple[CorpusFile, ...]:
    """Every vertical's file, validated (``CorpusError`` names the file that is not)."""
    return _load_directory(directory.resolve())


def load_corpus(
    split: Split | None = None,
    vertical: str | None = None,
    *,
    directory: Path = CORPUS_DIR,
) -> list[CorpusCall]:
    """The corpus's calls, optionally only one half of the split and one vertical."""
    calls: Iterable[CorpusCall] = (
        call for corpus_file in load_files(directory) for call in corpus_file.calls
    )
    return [
        call
        for call in calls
        if (split is None or call.split == split)
        and (vertical is None or call.vertical == vertical)
    ]
