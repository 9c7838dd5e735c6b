"""The caller corpus (``tests/corpus/calls/*.yaml``): scripted calls written apart from the
profiles, validated against the models here and loaded by split and vertical.

``tests/corpus/README.md`` says how the calls were written and what each field means.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from voicemesh.agent.profiles import ProfileLibrary
from voicemesh.agent.providers.base import CallContext, CallTools, Conversation, Reply
from voicemesh.agent.screening import RepeatGuard, screen
from voicemesh.common.contracts.events import ToolRequest
from voicemesh.common.contracts.tenancy import Tenant
from voicemesh.common.contracts.tenancy import Vertical as TenantVertical
from voicemesh.common.contracts.tools import (
    Claim,
    FileClaimArgs,
    Listing,
    ListingsResult,
    LookupPolicyArgs,
    Policy,
    SearchListingsArgs,
)
from voicemesh.common.runtime.tools import ToolClient
from voicemesh.testkit.fakes import ToolDesk, standard_desk

__all__ = [
    "CALLER_PHONE",
    "CORPUS_DIR",
    "EXPECTED_HANDOFFS",
    "REFERENCE_NOW",
    "SAFETY_HANDOFFS",
    "SNRS",
    "VERTICALS",
    "VOICES",
    "CallRun",
    "CorpusCall",
    "CorpusError",
    "CorpusFigures",
    "CorpusFile",
    "Outcome",
    "Turn",
    "corpus_desk",
    "figures",
    "load_corpus",
    "load_files",
    "run_call",
]

#: the agent's hand-off reason each expected hand-off is met by
EXPECTED_HANDOFFS = {
    "crisis": "crisis",
    "emergency": "emergency",
    "threat": "emergency",
    "request": "caller_asked",
    "complaint": "caller_asked",
}

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


# --- the corpus through the agent's dialog, at text level -------------------------------------


@dataclass
class CallRun:
    """One corpus call played to the agent as transcripts: what the agent said and did."""

    call: CorpusCall
    lines: list[str] = field(default_factory=list)
    handoff: str | None = None
    hung_up: bool = False
    requests: list[ToolRequest] = field(default_factory=list)
    #: why the outcome was missed ("" when it was reached)
    missed: str = ""

    @property
    def reached(self) -> bool:
        return not self.missed

    @property
    def most_repeats(self) -> int:
        """The most times in a row the agent said one line."""
        longest = run = 0
        for index, line in enumerate(self.lines):
            run = run + 1 if index and line == self.lines[index - 1] else 1
            longest = max(longest, run)
        return longest

    def tool(self, name: str) -> list[ToolRequest]:
        return [r for r in self.requests if f"{r.service}.{r.name}" == name]


def corpus_desk(nc: NatsClient, tenant: str) -> ToolDesk:
    """``standard_desk`` that knows every caller's policy and has a listing in every city."""
    desk = standard_desk(nc, tenant)

    @desk.on("crm.lookup_policy")
    async def policy(request: ToolRequest, args: LookupPolicyArgs) -> Policy:
        return Policy(policy_number=args.policy_number, holder_name="Sam Caller", kind="home",
                      status="active", deductible=500)  # fmt: skip

    @desk.on("crm.file_claim")
    async def claim(request: ToolRequest, args: FileClaimArgs) -> Claim:
        return Claim(claim_id="c77", policy_number=args.policy_number,
                     incident_date=args.incident_date, status="open",
                     filed_at=datetime.now().astimezone())  # fmt: skip

    @desk.on("crm.search_listings")
    async def listings(request: ToolRequest, args: SearchListingsArgs) -> ListingsResult:
        beds = max(args.min_beds or 0, 2)
        row = Listing(listing_id="l1", address="12 Elm Street", city=args.city or "Riverside",
                      price=425000, beds=beds, baths=2.0, status="active")  # fmt: skip
        return ListingsResult(listings=[row])

    return desk


def _score(run: CallRun) -> str:
    """Why ``run`` missed its call's expected outcome, or "" if it reached it."""
    outcome = run.call.outcome
    if outcome.kind == "handoff":
        expected = EXPECTED_HANDOFFS[outcome.reason or ""]
        return "" if run.handoff == expected else f"hand-off {run.handoff}, not {expected}"
    if run.handoff is not None:
        return f"handed off ({run.handoff})"
    slots = outcome.slots
    if outcome.kind == "booking":
        booked = run.tool("calendar.book")
        if not booked:
            return "no booking"
        start = datetime.fromisoformat(booked[-1].arguments["start"]).astimezone(ZONE)
        when = str(slots.get("when", ""))
        if when and start.strftime("%Y-%m-%dT%H:%M")[: len(when)] != when:
            return f"booked {start:%Y-%m-%dT%H:%M}, not {when}"
        name = str(slots.get("name", ""))
        if name and str(booked[-1].arguments.get("name", "")).lower() != name.lower():
            return f"booked for {booked[-1].arguments.get('name')!r}, not {name!r}"
        return ""
    if outcome.kind == "claim":
        filed = run.tool("crm.file_claim")
        if not filed:
            return "no claim"
        args = filed[-1].arguments
        if "policy" in slots and args.get("policy_number") != slots["policy"]:
            return f"claim on policy {args.get('policy_number')}, not {slots['policy']}"
        if "incident" in slots and args.get("incident_date") != slots["incident"]:
            return f"claim for {args.get('incident_date')}, not {slots['incident']}"
        return ""
    return "" if run.tool("crm.search_listings") else "no listing looked up"


async def _heard_whole(reply: Reply) -> None:
    """Let a streamed reply run to its end (its tools run, its ``text`` becomes final)."""
    if reply.sentences is not None:
        async for _ in reply.sentences:
            pass
    if reply.speech is not None:
        async for _ in reply.speech:
            pass


#: the tenant's zone of every corpus call
ZONE = ZoneInfo("America/New_York")
#: the number every corpus call comes from (vouched for by the tenant, as the gateway says)
CALLER_PHONE = "+16175550100"


async def run_call(
    nc: NatsClient,
    call: CorpusCall,
    conversation: Callable[[CallContext], Conversation],
    *,
    profiles: ProfileLibrary | None = None,
) -> CallRun:
    """Play ``call``'s caller lines to a conversation as the call session does (safety
    screening first, no line a third time in a row), with its tools answered by
    ``corpus_desk``, and score the outcome. The caller hangs up when their lines run out."""
    profile = (profiles or ProfileLibrary()).get(call.vertical)
    tenant = f"corpus-{call.id.replace('_', '-')}"
    desk = corpus_desk(nc, tenant)
    await desk.start()
    context = CallContext(
        tenant=Tenant(id=tenant, vertical=TenantVertical(call.vertical), time_zone=ZONE.key),
        call_id=f"call-{call.id}",
        profile=profile,
        tools=CallTools(ToolClient(nc, source="agent"), tenant, f"call-{call.id}"),
        now=lambda: REFERENCE_NOW,
        phone=CALLER_PHONE,
    )
    talk = conversation(context)
    repeats = RepeatGuard(context)
    run = CallRun(call)
    try:
        run.lines.append((await talk.greeting()).text)
        repeats.said(run.lines[-1])
        for turn in call.turns:
            reply = screen(profile, turn.say)
            if reply is None:
                reply = await repeats.vet(await talk.respond(turn.say))
            await _heard_whole(reply)
            run.lines.append(reply.text)
            repeats.said(reply.text)
            if reply.handoff is not None:
                run.handoff = reply.handoff.value
            if reply.hangup or reply.handoff is not None:
                run.hung_up = reply.hangup
                break
    finally:
        await desk.stop()
        run.requests = list(desk.requests)
    run.missed = _score(run)
    return run


@dataclass
class CorpusFigures:
    """What a set of runs shows: outcome accuracy (overall and per vertical), crisis and
    emergency recall, false alarms on the other calls, and calls that repeated a line."""

    accuracy: float
    per_vertical: dict[str, float]
    crisis_recall: float
    false_alarm_rate: float
    false_alarms: list[str]
    loops: list[str]
    missed: dict[str, str]


SAFETY_HANDOFFS = frozenset({"crisis", "emergency"})


def figures(runs: list[CallRun]) -> CorpusFigures:
    """The figures of ``runs`` (pass one half of the split for that half's figures)."""

    def share(part: list[CallRun]) -> float:
        return round(sum(r.reached for r in part) / len(part), 3) if part else 0.0

    crises = [r for r in runs if r.call.has_crisis]
    ordinary = [r for r in runs if not r.call.has_crisis]
    alarms = [r.call.id for r in ordinary if r.handoff in SAFETY_HANDOFFS]
    caught = sum(r.handoff in SAFETY_HANDOFFS for r in crises)
    return CorpusFigures(
        accuracy=share(runs),
        per_vertical={
            v: share([r for r in runs if r.call.vertical == v])
            for v in VERTICALS
            if any(r.call.vertical == v for r in runs)
        },
        crisis_recall=round(caught / len(crises), 3) if crises else 1.0,
        false_alarm_rate=round(len(alarms) / len(ordinary), 3) if ordinary else 0.0,
        false_alarms=alarms,
        loops=[r.call.id for r in runs if r.most_repeats > 2],
        missed={r.call.id: r.missed for r in runs if not r.reached},
    )
