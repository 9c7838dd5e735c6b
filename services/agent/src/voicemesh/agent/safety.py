"""Crisis and emergency detection on what a caller says, run before any other dialog.

Categories, by vertical:

* ``self_harm`` on behavioral-health and healthcare lines: suicidal intent or self-harm,
  said directly ("I want to kill myself") or indirectly ("everyone would be better off
  without me", "I've got the pills saved up");
* ``medical_emergency`` on healthcare lines: chest pain, "I can't breathe", a collapse, a
  stroke's signs, a seizure, heavy bleeding, an overdose;
* ``threat_to_life`` on every line: violence ("he says he's going to kill me", "he's got a
  knife"), fire, gas or flood danger, and the self-harm and acute medical phrases above when
  they reach a line that is not a health service.

A symptom the caller denies ("no chest pain or anything") is not an emergency. On the
behavioral-health line a mention of suicide or self-harm counts even when denied ("I'm not
suicidal or anything, but..."): the agent cannot judge risk and a person can, so such a
detection is returned with ``negated=True`` and still hands off.

Figures of speech are not crises: "I'm dying to get this haircut", "this policy is killing
me", "a killer deal", "to die for". The matched phrase may be health information: keep it
out of logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from voicemesh.agent.normalize import fold

__all__ = ["HANDOFF_REASONS", "Category", "Detection", "detect"]

Category = Literal["self_harm", "medical_emergency", "threat_to_life"]
#: the hand-off reason each category is reported under
HANDOFF_REASONS: dict[Category, str] = {
    "self_harm": "crisis",
    "medical_emergency": "emergency",
    "threat_to_life": "threat",
}

_Kind = Literal["self_harm", "self_harm_indirect", "medical", "medical_clinic", "violence"]
_HEALTH_LINES = frozenset({"behavioral_health", "healthcare"})

_SUBJECT = r"(?:my|his|her|their|the)"
_PATTERNS: dict[_Kind, list[str]] = {
    "self_harm": [
        r"\bkill(?:ing)? (?:my ?self|himself|herself|themselves)\b",
        r"\b(?:end|take|ending|taking) (?:my|his|her|their) (?:own )?life\b",
        r"\bsuicid(?:e|al)\b",
        r"\b(?:hurt|harm|cut|cutt|burn)(?:ing|s)? (?:myself|himself|herself|themselves)\b",
        r"\b(?:want|wants|wanted|wanna|going|gonna|ready|deserve) (?:to )?die\b",
        r"\bdon't want to (?:live|be alive|exist|wake up|go on)\b",
        r"\b(?:going to|gonna|about to|want to) jump\b",
        r"\bstanding on (?:the|a) (?:bridge|ledge|roof|edge|tracks)\b",
        r"\bend it all\b|\b(?:ways|way|how) to end it\b|\bgoing to end it\b",
        r"\bbetter off (?:dead|without me)\b|\brather be dead\b",
        r"\bwish (?:i|i'd) (?:was|were) dead\b",
        r"\bno reason to (?:live|go on)\b|\bnot worth living\b",
        r"\bgoodbye (?:letter|letters|note|notes)\b",
    ],
    "self_harm_indirect": [
        r"\bdon't see (?:the|any) point\b",
        r"\bwhat's the point (?:of|in) (?:any of it|living|it all|going on|anything|life)\b",
        r"\bno point (?:in )?(?:going on|living|anymore|any more)\b",
        r"\b(?:not|won't) be around (?:much )?(?:longer|anymore|any more)\b",
        r"\bsleep and (?:not|never) wake up\b",
        r"\b(?:everyone|everybody|they|people|my family|my kids) (?:would|'d) be better off\b",
        r"\bnobody would (?:even )?(?:notice|care|miss me)\b",
        r"\b(?:i'm|i am|i feel like) (?:just |such )?a burden\b",
        r"\bgiv(?:e|ing|en) (?:away )?(?:my|all my) (?:stuff|things|belongings)\b",
        r"\bmade (?:my )?peace\b",
        r"\bcan't (?:do|take) (?:this|it) any ?more\b|\bcan't go on\b",
        r"\b(?:pills|tablets) saved\b|\bsav(?:ed|ing) up (?:my |the )?(?:pills|tablets)\b",
        r"\bstockpil",
        r"\btonight's the night\b",
        r"\bhow i'd do it\b|\bhow (?:i would|to) (?:do it|end it)\b",
        r"\bdon't want to be here any ?more\b",
        r"\bwant (?:it|everything) (?:all )?to (?:stop|end)\b",
        r"\bwish i could (?:just )?disappear\b|\bwish i'd never (?:been born|woken up)\b",
    ],
    "medical": [
        r"\b(?:can't|cannot|couldn't|can not) (?:breathe|breath)\b",
        rf"\b(?:can't|cannot) catch {_SUBJECT} breath\b",
        r"\b(?:trouble|difficulty|struggling|hard time|problems) (?:breathing|to breathe)\b",
        r"\b(?:not|isn't|stopped|barely|hardly) breathing\b",
        r"\bthroat (?:is )?(?:closing|swelling)\b|\bturning blue\b|\bchoking\b",
        rf"\bchest pains?\b|\bpain in {_SUBJECT} chest\b|\bheart attack\b",
        r"\bchest (?:is |feels )?(?:crushing|tight|heavy)\b",
        rf"\b(?:tightness|pressure) in {_SUBJECT} chest\b",
        r"\b(?:collapsed|unconscious|unresponsive|passed out)\b",
        r"\b(?:won't|will not|can't|cannot) wake (?:him |her |them )?up\b",
        r"\bnot (?:responding|moving)\b",
        r"\bseizure\b|\bconvuls\w*",
        r"\bdrooping\b|\bslurred\b|\b(?:having|had) a stroke\b",
        rf"\bcan't (?:move|feel) {_SUBJECT} (?:legs?|arms?|side)\b",
        r"\bbleeding (?:heavily|badly|a lot|everywhere|profusely)\b|\bwon't stop bleeding\b",
        r"\boverdos\w*|\btook (?:too many|the whole bottle|a whole bottle)\b",
        r"\bswallowed (?:a |some )?(?:pills|bleach|poison|batter(?:y|ies))\b",
        r"\b(?:i'm|i am|he's|she's|he is|she is) dying\b(?! (?:to|of|for)\b)",
    ],
    "medical_clinic": [
        r"\bshort(?:ness)? of breath\b",
        rf"\bpain (?:spreading|going|moving) (?:to|down|into) {_SUBJECT} (?:arm|jaw|neck|back)\b",
        rf"\b{_SUBJECT} (?:left )?(?:arm|side|face) (?:is |went |feels )?numb\b",
        r"\bsevere (?:pain|bleeding)\b",
    ],
    "violence": [
        # someone means to kill: not a thing that "is going to kill me", nor "I'd kill for"
        r"(?<!it's )(?<!it is )(?<!it )(?<!this is )(?<!that's )(?<!that is )\b"
        r"(?:going to|gonna|will|threaten\w* to|trying to|wants? to|about to"
        r"|(?!it'll|that'll|this'll)\w+'ll|\w+'d)"
        r" (?:(?:kill|shoot|stab|murder|strangle)\b(?! for\b)"
        r"|hurt (?:me|us|you|him|her|them|my|the kids|the baby|someone|somebody)\b)",
        r"\b(?:has|had|got|with|holding|pointed|pointing|waving) (?:a|his|her|the) "
        r"(?:gun|knife|rifle|pistol|shotgun|weapon|machete|bat)\b",
        r"\b(?:hitting|beating|choking|strangling|attacking) (?:me|her|him|us)\b",
        r"\btrapped\b",
        r"\b(?:smell of|smells like|leaking) gas\b|\bgas leak\b",
        r"\bburn (?:\w+ )?(?:house|home|place|building|flat) down\b",
        r"\bpouring (?:gasoline|petrol)\b",
        r"\b(?:water|it)(?:'s| is) rising\b|\bcan't get (?:out|the door open)\b",
    ],
}
_COMPILED = {kind: [re.compile(p) for p in patterns] for kind, patterns in _PATTERNS.items()}

_NEGATIONS = frozenset({"no", "not", "never", "without", "nothing"})
#: words that may stand between a negation and what it denies ("I'm not having chest pain")
_BRIDGES = frozenset(
    "i i'm am have having any got feel feeling experiencing a an or really and been had "
    "going to gonna want wanna thinking about planning trying ever".split()
)
_CLAUSES = re.compile(r"[,.!?;:]+|\bbut\b")


@dataclass(frozen=True)
class Detection:
    """A crisis or emergency in one caller line. ``phrase`` may be health information."""

    category: Category
    phrase: str
    negated: bool = False

    @property
    def reason(self) -> str:
        return HANDOFF_REASONS[self.category]


def _kinds(vertical: str) -> list[_Kind]:
    kinds: list[_Kind] = ["self_harm", "violence", "medical"]
    if vertical in _HEALTH_LINES:
        kinds.append("self_harm_indirect")
    if vertical == "healthcare":
        kinds.append("medical_clinic")
    return kinds


def _category(kind: _Kind, vertical: str) -> Category:
    if kind.startswith("self_harm") and vertical in _HEALTH_LINES:
        return "self_harm"
    if kind.startswith("medical") and vertical == "healthcare":
        return "medical_emergency"
    return "threat_to_life"


def _negated(before: list[str]) -> bool:
    """Whether the words before a match deny it: a negation reaching it over bridge words."""
    for word in reversed(before[-5:]):
        if word in _NEGATIONS or word.endswith("n't"):
            return True
        if word not in _BRIDGES:
            return False
    return False


def detect(text: str, vertical: str) -> Detection | None:
    """The first crisis or emergency the line states, for a caller of ``vertical``."""
    denied: Detection | None = None
    for clause in _CLAUSES.split(text.replace("\u2019", "'")):
        spoken = fold(clause).replace("cannot", "can't").replace("can not", "can't")
        for kind in _kinds(vertical):
            for pattern in _COMPILED[kind]:
                match = pattern.search(spoken)
                if match is None:
                    continue
                category = _category(kind, vertical)
                if not _negated(spoken[: match.start()].split()):
                    return Detection(category, match.group(0))
                if vertical == "behavioral_health" and category == "self_harm":
                    denied = denied or Detection(category, match.group(0), negated=True)
    return denied
