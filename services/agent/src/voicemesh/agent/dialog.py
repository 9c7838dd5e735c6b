"""The offline dialog: intents, slot filling with confirmation, and tool calls, per profile.

Deterministic by design: the same words give the same answer, so a vertical's behaviour can
be read in its profile and tested line by line. A tool failure the profile does not
expect raises ``ToolUnavailable``; the call session turns that into an apology and a
hand-off, never into silence.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from voicemesh.agent.profiles import ActionSpec, IntentSpec, Profile, SlotSpec, spoken_forms
from voicemesh.agent.providers.base import CallContext, ProviderError, Reply
from voicemesh.agent.templates import TemplateError, lookup, render, render_value
from voicemesh.agent.when import format_spoken, parse_digits, resolve_when

__all__ = ["DialogState", "OfflineConversation", "ToolUnavailable"]

log = logging.getLogger(__name__)

_YES = re.compile(r"\b(yes|yeah|yep|correct|right|sure|okay|please do|go ahead)\b")
_NO = re.compile(r"\b(no|nope|wrong|not right)\b")
_BYE = re.compile(r"\b(goodbye|bye|that's all|nothing else)\b")
_NAME_CUE = re.compile(r"\b(my name is|this is|it's|i am|i'm)\b")
_NUMBER_CUE = re.compile(r"\b(number is|number's|it's)\b")


class ToolUnavailable(ProviderError):
    """A tool failed in a way the profile has no words for."""


@dataclass
class DialogState:
    intent: str | None = None
    slots: dict[str, Any] = field(default_factory=dict)
    pending: str | None = None
    confirming: bool = False
    asked_anything_else: bool = False
    offered: str | None = None
    partial_when: dict[str, Any] = field(default_factory=dict)


class OfflineConversation:
    """One call's dialog, driven by its profile."""

    def __init__(self, context: CallContext) -> None:
        self._ctx = context
        self._profile: Profile = context.profile
        self._zone = ZoneInfo(context.tenant.time_zone)
        self.state = DialogState()
        #: tool results outlive an intent: a showing books the listing just found
        self.results: dict[str, Any] = {}
        self._attempts = 0

    async def greeting(self) -> Reply:
        return Reply(self._render(self._profile.greeting))

    async def respond(self, text: str) -> Reply:
        words = " ".join(text.lower().split())
        state = self.state
        if not words:
            return Reply(self._profile.messages.didnt_catch)
        if state.confirming and state.intent:
            return await self._on_confirmation(words)
        if _BYE.search(words) or (state.asked_anything_else and _NO.search(words)):
            return Reply(self._profile.messages.goodbye, hangup=True, intent="goodbye")
        if state.intent is None and state.offered and _YES.search(words):
            state.intent = state.offered
        if state.intent is None:
            state.intent = self._detect_intent(words)
            state.asked_anything_else = False
            if state.intent is None:
                return Reply(self._render(self._profile.messages.didnt_catch))
        intent = self._profile.intents[state.intent]
        self._extract(intent, words)
        return await self._advance(intent)

    def is_complete(self, text: str) -> bool:
        """Whether ``text`` is already a whole answer to what the agent just asked: a yes or
        no to a confirmation, or a value that fills the asked slot completely (every digit
        of a phone number, a first and last name, a day and a time). Changes nothing."""
        words = " ".join(text.lower().split())
        state = self.state
        if not words:
            return False
        if state.confirming:
            return bool(_YES.search(words) or _NO.search(words))
        if state.asked_anything_else and (_NO.search(words) or _BYE.search(words)):
            return True
        if state.intent is None or state.pending is None:
            return False
        spec = self._profile.slots[state.pending]
        if spec.type == "datetime":  # (_when_value would keep a half-given day or time)
            now = self._ctx.now().astimezone(self._zone)
            resolved = resolve_when(words, now, tense=spec.tense)
            return resolved.day is not None and (resolved.at is not None or spec.tense == "past")
        value = self._slot_value(state.pending, spec, words, asked=True)
        if spec.type == "name":  # a first name alone: the surname may follow the pause
            return value is not None and len(value.split()) >= 2
        return value is not None

    # -- intents and slots ------------------------------------------------------------------

    def _detect_intent(self, words: str) -> str | None:
        best: tuple[int, str] | None = None
        for name, intent in self._profile.intents.items():
            hits = sum(1 for k in intent.keywords if re.search(rf"\b{re.escape(k)}\b", words))
            if hits and (best is None or hits > best[0]):
                best = (hits, name)
        return best[1] if best else None

    def _extract(self, intent: IntentSpec, words: str) -> None:
        # One utterance names one person: the slot asked for, else the first one missing.
        pending = self.state.pending
        name_slots = [s for s in intent.slots if self._profile.slots[s].type == "name"]
        missing_names = [s for s in name_slots if s not in self.state.slots]
        name_target = pending if pending in name_slots else next(iter(missing_names), None)
        for slot_name in intent.slots:
            spec = self._profile.slots[slot_name]
            if spec.type == "name" and slot_name != name_target:
                continue
            asked = pending == slot_name
            value = self._slot_value(slot_name, spec, words, asked=asked)
            if value is not None:
                self.state.slots[slot_name] = value

    def _slot_value(self, name: str, spec: SlotSpec, words: str, *, asked: bool) -> Any:
        if spec.type == "choice":
            best: tuple[int, str] | None = None
            for value, synonyms in spec.choices.items():
                for phrase in spoken_forms(value, synonyms):
                    if re.search(rf"\b{re.escape(phrase)}\b", words) and (
                        best is None or len(phrase) > best[0]
                    ):
                        best = (len(phrase), value)
            return best[1] if best else None
        if spec.type == "datetime":
            return self._when_value(name, spec, words)
        if spec.type == "name":
            if not (asked or _NAME_CUE.search(words)):
                return None
            known = set(spec.names)
            tail = _NAME_CUE.split(words)[-1] if _NAME_CUE.search(words) else words
            parts = [w for w in tail.split() if w in known][:2]
            return " ".join(p.capitalize() for p in parts) if parts else None
        digits = parse_digits(words) if (asked or _NUMBER_CUE.search(words)) else ""
        if len(digits) != spec.digits:
            return None
        return f"+1{digits}" if spec.phone else digits

    def _when_value(self, name: str, spec: SlotSpec, words: str) -> Any:
        now = self._ctx.now().astimezone(self._zone)
        resolved = resolve_when(words, now, tense=spec.tense)
        partial = self.state.partial_when.setdefault(name, {})
        if resolved.day is not None:
            partial["day"] = resolved.day
        if resolved.at is not None:
            partial["at"] = resolved.at
        if resolved.day is None and resolved.at is None:
            return None
        if "day" in partial and ("at" in partial or spec.tense == "past"):
            # An incident "yesterday" needs no hour; noon keeps the date right in any zone.
            at = partial.get("at") or time(12, 0)
            moment = datetime.combine(partial["day"], at, tzinfo=self._zone)
            self.state.partial_when.pop(name, None)
            return moment
        return None

    async def _advance(self, intent: IntentSpec) -> Reply:
        state = self.state
        for check in intent.checks:
            key = check.action.key
            if key in self.results or not all(s in state.slots for s in check.after):
                continue
            result = await self._run_action(check.action)
            if result is None:
                return self._retry_reply
            if _truthy(result, check.stop_if):
                message = self._render(check.stop_message)
                self._reset()
                return Reply(message, hangup=check.hangup_on_stop, intent=state.intent)
        missing = [s for s in intent.slots if s not in state.slots]
        if missing:
            return self._ask(intent)
        if intent.confirm:
            state.confirming = True
            state.pending = None
            return Reply(self._render(intent.confirm), intent=state.intent)
        return await self._complete(intent)

    def _ask(self, intent: IntentSpec) -> Reply:
        missing = [s for s in intent.slots if s not in self.state.slots]
        if not missing:
            return Reply(self._render(self._profile.messages.didnt_catch))
        slot = missing[0]
        self.state.pending = slot
        return Reply(self._render(self._profile.slots[slot].prompt), intent=self.state.intent)

    async def _on_confirmation(self, words: str) -> Reply:
        assert self.state.intent is not None
        intent = self._profile.intents[self.state.intent]
        if _NO.search(words) and not _YES.search(words.replace("that's right", "yes")):
            self._reset()
            return Reply(self._render(self._profile.messages.declined))
        if _YES.search(words):
            self.state.confirming = False
            return await self._complete(intent)
        return Reply(self._render(intent.confirm or self._profile.messages.didnt_catch))

    async def _complete(self, intent: IntentSpec) -> Reply:
        name = self.state.intent
        done = [intent.done]
        for action in intent.actions:
            result = await self._run_action(action)
            if result is None:
                if self.state.pending is not None:
                    return self._retry_reply
                if action.optional:
                    continue
                raise ToolUnavailable(f"{action.tool} failed")
            if action.said:
                done.append(action.said)
        message = self._render(" ".join(done))
        self._reset()
        if intent.hangup_after:
            return Reply(message, hangup=True, intent=name)
        if intent.offer:
            self.state.offered = intent.offer
            return Reply(message, intent=name)
        self.state.asked_anything_else = True
        return Reply(f"{message} {self._profile.messages.anything_else}", intent=name)

    async def _run_action(self, action: ActionSpec) -> dict[str, Any] | None:
        """The result, or ``None`` after arranging what to say (``_retry_reply``)."""
        try:
            arguments = render_value(action.arguments, self._context())
        except (TemplateError, ValueError) as exc:
            raise ToolUnavailable(f"{action.tool}: cannot fill argument {exc}") from exc
        key = None
        if action.idempotent:
            # A retry after "slot taken" is a different booking, so it gets its own key.
            key = f"{self._ctx.call_id}:{self.state.intent}:{action.key}:{self._attempts}"
        result = await self._ctx.tools.call(
            action.service, action.name, arguments, idempotency_key=key
        )
        if result.ok and result.result is not None:
            if action.require is None or _truthy(result.result, action.require):
                self.results[action.key] = result.result
                return result.result
            code = "empty"
        else:
            code = result.error.code.value if result.error else "internal"
        self._attempts += 1
        log.info("tool %s answered %s", action.tool, code)
        message = action.on_error.get(code)
        if message is None:
            if action.optional:
                return None
            raise ToolUnavailable(f"{action.tool} answered {code}")
        self.state.confirming = False
        spoken = self._render(message)  # before the retried slot is forgotten
        if action.retry_slot:
            self.state.slots.pop(action.retry_slot, None)
            self.state.pending = action.retry_slot
        else:
            self.state.pending = None
        self._retry_reply = Reply(spoken, intent=self.state.intent)
        if action.retry_slot is None:
            self._reset()
        return None

    _retry_reply: Reply = Reply("")

    def _reset(self) -> None:
        self.state = DialogState()

    # -- templates --------------------------------------------------------------------------

    def _context(self) -> dict[str, Any]:
        now = self._ctx.now().astimezone(self._zone)
        context: dict[str, Any] = {
            "call_id": self._ctx.call_id,
            "tenant": self._ctx.tenant.id,
            "business": self._profile.display_name,
            **self.results,
        }
        for name, value in self.state.slots.items():
            spec = self._profile.slots[name]
            if spec.type == "datetime":
                context[name] = format_spoken(value, now)
                context[f"{name}_iso"] = value.isoformat()
                context[f"{name}_date"] = value.date().isoformat()
                context[f"{name}_day"] = format_spoken(value, now).split(" at ", 1)[0]
            elif spec.type == "choice":
                context[name] = value.replace("_", " ")
                context[f"{name}_value"] = value
            elif spec.type == "digits":
                context[name] = value
                context[f"{name}_spoken"] = " ".join(value.removeprefix("+1"))
            else:
                context[name] = value
        return context

    def _render(self, template: str) -> str:
        return render(template, self._context())


def _truthy(result: dict[str, Any], condition: str) -> bool:
    negate = condition.startswith("not ")
    path = condition.removeprefix("not ").strip()
    try:
        value = bool(lookup(result, path))
    except TemplateError:
        value = False
    return not value if negate else value
