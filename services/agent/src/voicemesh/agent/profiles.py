"""Vertical profiles: what an agent says, asks, hears and may do, loaded from YAML files.

A profile is data, not code: persona, greeting, turn-taking timings, the vocabulary the
offline recogniser listens for, intents with their slots, the tool calls an intent makes and
its policies (PHI, crisis words). Adding a vertical means adding ``profiles/<name>.yaml``
(or a file in a directory named by ``VOICEMESH_AGENT_PROFILE_DIRS``); no code changes.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "BUILTIN_PROFILE_DIR",
    "ActionSpec",
    "CheckSpec",
    "IntentSpec",
    "Messages",
    "Profile",
    "ProfileError",
    "ProfileLibrary",
    "ScriptStep",
    "SlotSpec",
    "TurnTiming",
    "spoken_forms",
]

BUILTIN_PROFILE_DIR = Path(__file__).parent / "profiles"

_SLOT_REF = re.compile(r"<([a-z_][a-z0-9_]*)>")


class ProfileError(ValueError):
    """A profile file that cannot be used, with the file and the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TurnTiming(_Model):
    """Voice activity and turn-taking knobs, tuned per vertical (a therapist waits longer)."""

    vad_mode: int = Field(default=2, ge=0, le=3)
    end_of_turn_ms: int = Field(default=600, ge=200, le=3000)
    #: after this much silence the agent ends the turn early if what it heard so far is
    #: already a whole answer to its question (a yes, a full phone number); 0 turns it off
    early_end_ms: int = Field(default=240, ge=0, le=3000)
    min_utterance_ms: int = Field(default=260, ge=60, le=2000)
    barge_in_ms: int = Field(default=220, ge=60, le=1500)
    silence_prompt_s: float = Field(default=8.0, gt=0)
    silence_hangup_s: float = Field(default=6.0, gt=0)
    max_turn_s: float = Field(default=20.0, gt=1)


class SlotSpec(_Model):
    """One piece of information an intent needs from the caller."""

    type: Literal["choice", "datetime", "digits", "name", "address"]
    prompt: str
    #: the question asked the second time in a row, said another way (a generic one when
    #: empty); ``example`` the third time: the choices, or how an answer sounds
    reprompt: str = ""
    example: str = ""
    #: what templates say for a slot the caller never gave (an intent's optional slot)
    default: str = ""
    #: asked once only: an answer that does not give it leaves it at ``default``
    ask_once: bool = False
    #: choice: canonical value → spoken synonyms (the value itself is always a synonym)
    choices: dict[str, list[str]] = Field(default_factory=dict)
    #: name: names the grammar recogniser listens for (any name is understood from open
    #: speech)
    names: list[str] = Field(default_factory=list)
    #: digits: how many digits make a complete value; ``phone`` formats as E.164 (+1)
    digits: int = Field(default=0, ge=0, le=20)
    phone: bool = False
    #: datetime: appointments are in the future, incidents in the past
    tense: Literal["future", "past"] = "future"

    @model_validator(mode="after")
    def _check(self) -> SlotSpec:
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice slot needs choices")
        if self.type == "digits" and not self.digits:
            raise ValueError("a digits slot needs a digit count")
        return self


class ActionSpec(_Model):
    """A tool call over NATS; ``arguments`` are templates filled from slots and results."""

    tool: str = Field(pattern=r"^[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*$")
    arguments: dict[str, Any] = Field(default_factory=dict)
    #: name under which the result is available to later templates (default: tool name)
    save_as: str | None = None
    #: error code → what to say; ``retry_slot`` clears that slot and asks it again
    on_error: dict[str, str] = Field(default_factory=dict)
    retry_slot: str | None = None
    #: a failing optional action (the confirmation text) does not fail the intent
    optional: bool = False
    #: said after the intent's ``done`` line only when this action succeeded ("I've texted
    #: you"): a text the sms service refused is never claimed as sent
    said: str = ""
    idempotent: bool = False
    #: a result field that must be non-empty; otherwise the error code is ``empty``
    require: str | None = None

    @property
    def service(self) -> str:
        return self.tool.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.tool.split(".", 1)[1]

    @property
    def key(self) -> str:
        return self.save_as or self.name


class CheckSpec(_Model):
    """A tool call made as soon as some slots are known (a legal conflict check)."""

    after: list[str]
    action: ActionSpec
    #: a truthy result field that ends the intent with ``stop_message``
    stop_if: str
    stop_message: str
    hangup_on_stop: bool = True


class IntentSpec(_Model):
    keywords: list[str]
    slots: list[str] = Field(default_factory=list)
    #: slots taken when the caller says them, never asked for ("with Maria")
    optional_slots: list[str] = Field(default_factory=list)
    #: JSGF expansions the caller may say for this intent; ``<slot>`` refers to a slot
    utterances: list[str] = Field(default_factory=list)
    checks: list[CheckSpec] = Field(default_factory=list)
    confirm: str | None = None
    actions: list[ActionSpec] = Field(default_factory=list)
    done: str
    hangup_after: bool = False
    #: the intent a plain "yes" after ``done`` starts ("would you like to book a showing?")
    offer: str | None = None


class Messages(_Model):
    didnt_catch: str = "Sorry, I didn't catch that. Could you say it again?"
    still_there: str = "Are you still there?"
    silence_goodbye: str = "It seems we got disconnected. Please call us back any time. Goodbye."
    goodbye: str = "Thank you for calling. Goodbye."
    anything_else: str = "Is there anything else I can help you with?"
    declined: str = "No problem, let's start over. What would you like to do?"
    apology: str = (
        "I'm sorry, I'm having trouble on my end right now. I'm passing your call to a member "
        "of our team, who will call you back shortly. Goodbye."
    )
    menu: str = "How can I help you today?"
    #: the second "didn't catch" in a row, and the third (how a request sounds)
    rephrase: str = "Sorry, I still didn't understand. What would you like to do today?"
    example: str = "For example, you can say: I'd like to book an appointment."
    #: a yes or no asked again
    confirm_again: str = "Sorry, was that a yes or a no?"
    confirm_example: str = "Please say yes to go ahead, or no to change something."
    #: after the third try: a person will call back
    not_understood: str = (
        "I'm sorry, I'm having trouble understanding. I'm passing your call to a member of our "
        "team, who will call you back shortly."
    )
    #: the caller asked for a person
    transfer: str = (
        "Of course. I'm passing your call to a member of our team, who will call you back shortly."
    )
    callback_texted: str = "I've texted you our number."


class Policies(_Model):
    #: None: follow the vertical (healthcare-class verticals handle PHI)
    phi: bool | None = None
    #: phrases that hand off as a crisis on this line, besides what ``safety`` detects
    crisis_words: list[str] = Field(default_factory=list)
    #: said on self-harm (the emergency message when empty)
    crisis_message: str = ""
    #: said on a medical emergency or a danger to someone's life
    emergency_message: str = (
        "If you or someone with you is in danger, please hang up and call nine one one now. "
        "I'm also passing your call to a member of our team."
    )


class ScriptStep(_Model):
    """One caller line of the profile's demo script and what the agent must answer."""

    say: str
    expect: str


class Profile(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    vertical: str
    display_name: str
    persona: str
    greeting: str
    voice: str = "en-us"
    speech_rate: int = Field(default=170, ge=80, le=400)
    turn: TurnTiming = TurnTiming()
    messages: Messages = Messages()
    policies: Policies = Policies()
    slots: dict[str, SlotSpec] = Field(default_factory=dict)
    intents: dict[str, IntentSpec]
    #: extra JSGF expansions accepted outside any intent (small talk)
    utterances: list[str] = Field(default_factory=list)
    #: pocketsphinx search: "grammar" (per-vertical JSGF) or "lm" (the general model)
    stt_search: Literal["grammar", "lm"] = "grammar"
    demo_script: list[ScriptStep] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_references(self) -> Profile:
        for intent_name, intent in self.intents.items():
            if intent.offer is not None and intent.offer not in self.intents:
                raise ValueError(f"intent {intent_name!r} offers unknown intent {intent.offer!r}")
            for slot in [*intent.slots, *intent.optional_slots]:
                if slot not in self.slots:
                    raise ValueError(f"intent {intent_name!r} uses undefined slot {slot!r}")
            for utterance in intent.utterances:
                for ref in _SLOT_REF.findall(utterance):
                    if ref not in self.slots and ref not in _BUILTIN_RULES and ref != "name_part":
                        raise ValueError(f"utterance {utterance!r} refers to unknown <{ref}>")
        return self

    @property
    def handles_phi(self) -> bool:
        if self.policies.phi is not None:
            return self.policies.phi
        return self.vertical in {"healthcare", "behavioral_health"}

    def tools(self) -> list[ActionSpec]:
        """Every tool this profile may call (the OpenAI provider offers exactly these)."""
        seen: dict[str, ActionSpec] = {}
        for intent in self.intents.values():
            for action in [*intent.actions, *(c.action for c in intent.checks)]:
                seen.setdefault(action.tool, action)
        return list(seen.values())

    def grammar(self) -> str:
        """The JSGF grammar the offline recogniser uses for this vertical."""
        return build_grammar(self)


class ProfileLibrary:
    """Profiles found in the built-in directory and any extra directories, by name."""

    def __init__(self, extra_dirs: list[Path] | None = None) -> None:
        self._dirs = [BUILTIN_PROFILE_DIR, *(extra_dirs or [])]
        self._profiles: dict[str, Profile] = {}
        for directory in self._dirs:
            for path in sorted(directory.glob("*.yaml")):
                profile = load_profile(path)
                self._profiles[profile.name] = profile

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def get(self, name: str) -> Profile:
        try:
            return self._profiles[name]
        except KeyError:
            raise ProfileError(f"no profile named {name!r}; have {self.names()}") from None


def load_profile(path: Path) -> Profile:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from exc
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    unknown = unknown_words(profile)
    if unknown:
        raise ProfileError(
            f"{path}: the recogniser's dictionary has no pronunciation for {sorted(unknown)}; "
            "spell them as dictionary words"
        )
    return profile


# --- the offline recogniser's grammar --------------------------------------------------------

_NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty"
)
_ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth "
    "thirtieth"
)

_BUILTIN_RULES: dict[str, str] = {
    "digit": "zero | oh | one | two | three | four | five | six | seven | eight | nine",
    "hour": "one | two | three | four | five | six | seven | eight | nine | ten | eleven | twelve",
    "minute": "fifteen | thirty | forty five | o'clock",
    "ampm": "a m | p m | in the morning | in the afternoon | in the evening",
    "weekday": "monday | tuesday | wednesday | thursday | friday | saturday | sunday",
    "month": "january | february | march | april | may | june | july | august | september | "
    "october | november | december",
    "ordinal": "first | second | third | fourth | fifth | sixth | seventh | eighth | ninth | "
    "tenth | eleventh | twelfth | thirteenth | fourteenth | fifteenth | sixteenth | "
    "seventeenth | eighteenth | nineteenth | twentieth | twenty [first | second | third | "
    "fourth | fifth | sixth | seventh | eighth | ninth] | thirtieth | thirty first",
    "day": "today | tomorrow | yesterday | the day after tomorrow | [this | next] <weekday> | "
    "<month> <ordinal> | <weekday> <month> <ordinal>",
    "time": "(<hour> [<minute>] [<ampm>]) | noon | midday",
    "when": "[on] <day> [at <time>] | at <time> [<day>]",
    "yesno": "yes | yeah | yes please | correct | that's right | sure | okay | no | nope | "
    "no thanks | that's wrong",
    "polite": "please | thank you | thanks",
    "bye": "goodbye | bye | that's all | that's all thanks | no that's all | "
    "no that's all thank you | nothing else",
}


def _spoken(value: str, synonyms: list[str]) -> list[str]:
    """How a choice can be said: its synonyms, and its value when that is a word."""
    own = [value.replace("_", " ")] if value.replace("_", "").isalpha() else []
    return [*own, *synonyms]


def _slot_rule(spec: SlotSpec) -> str:
    if spec.type == "choice":
        words = {w for value, synonyms in spec.choices.items() for w in _spoken(value, synonyms)}
        return " | ".join(sorted(w.replace("_", " ") for w in words))
    if spec.type == "name":
        return "<name_part> [<name_part>]"
    if spec.type == "address":
        return "[<digit>] [<digit>] [<digit>] <name_part> (street | road | avenue | lane | drive)"
    if spec.type == "digits":
        # Exactly as many digits as the value has: far fewer insertions than <digit>+.
        return " ".join(["<digit>"] * spec.digits)
    return "<when>"


def build_grammar(profile: Profile) -> str:
    rules = dict(_BUILTIN_RULES)
    names: set[str] = set()
    for slot_name, spec in profile.slots.items():
        # Slot rules get a prefix so a slot named like a built-in rule cannot shadow it.
        rules[f"slot_{slot_name}"] = _slot_rule(spec)
        if spec.type == "name":
            names.update(spec.names)
    rules["name_part"] = " | ".join(sorted(names)) if names else "<digit>"

    def own(utterance: str) -> str:
        return _SLOT_REF.sub(
            lambda m: f"<slot_{m.group(1)}>" if m.group(1) in profile.slots else m.group(0),
            utterance,
        )

    phrases = [own(u) for intent in profile.intents.values() for u in intent.utterances]
    phrases += [own(u) for u in profile.utterances]
    phrases += [
        "[<yesno>] [<polite>]",
        "<yesno> <polite>",
        "<bye>",
        "[my name is | it's | this is] <name_part> [<name_part>]",
        "[how about | what about | let's do] <when>",
    ]
    # Each slot can also be answered on its own ("tuesday at ten", "haircut").
    phrases += [f"[<slot_{s}>] [please]" for s in profile.slots]
    lines = ["#JSGF V1.0;", f"grammar {profile.name};"]
    lines.append("public <utterance> = " + " | ".join(f"({p})" for p in phrases) + ";")
    for name, body in rules.items():
        lines.append(f"<{name}> = {body};")
    return "\n".join(lines) + "\n"


def grammar_words(profile: Profile) -> set[str]:
    text = build_grammar(profile)
    body = "\n".join(line.split("=", 1)[1] for line in text.splitlines() if "=" in line)
    body = _SLOT_REF.sub(" ", body)
    return {w for w in re.split(r"[\s|()\[\];+*]+", body) if w}


@cache
def dictionary_words() -> frozenset[str]:
    """Words the bundled pocketsphinx dictionary can pronounce."""
    import pocketsphinx

    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    words = set()
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            word = line.split(" ", 1)[0]
            words.add(word.split("(", 1)[0])
    return frozenset(words)


def unknown_words(profile: Profile) -> set[str]:
    return grammar_words(profile) - dictionary_words()


def spoken_forms(value: str, synonyms: list[str]) -> list[str]:
    return _spoken(value, synonyms)
