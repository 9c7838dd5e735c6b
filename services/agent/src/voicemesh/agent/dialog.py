"""The offline dialog: intents, slot filling with confirmation, and tool calls, per profile.

Deterministic by design: the same words give the same answer, so a vertical's behaviour can
be read in its profile and tested line by line. It reads free speech (``understand``) and
never loops: one question is asked at most three times in a row, said differently each
time (``asking``), before a person takes the call over with a callback text. A tool
failure the profile does not expect raises ``ToolUnavailable``; the call session turns
that into an apology and a hand-off, never into silence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from voicemesh.agent.asking import Asker, example, rephrase
from voicemesh.agent.profiles import ActionSpec, IntentSpec, Profile, SlotSpec
from voicemesh.agent.providers.base import CallContext, ProviderError, Reply
from voicemesh.agent.screening import text_callback
from voicemesh.agent.templates import TemplateError, lookup, render, render_value
from voicemesh.agent.understand import (
    asks_for_person,
    detect_intent,
    read_slot,
    says_goodbye,
    yes_no,
)
from voicemesh.agent.when import format_spoken, resolve_when
from voicemesh.common.contracts.events import HandoffReason

__all__ = ["DialogState", "OfflineConversation", "ToolUnavailable"]

log = logging.getLogger(__name__)


class ToolUnavailable(ProviderError):
    """A tool failed in a way the profile has no words for."""


@dataclass
class DialogState:
    intent: str | None = None
    slots: dict[str, Any] = field(default_factory=dict)
    pending: str | None = None
    #: ``ask_once`` slots asked and not answered: templates say their default
    skipped: set[str] = field(default_factory=set)
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
        self._asker = Asker()

    async def greeting(self) -> Reply:
        return Reply(self._render(self._profile.greeting))

    async def respond(self, text: str) -> Reply:
        try:
            return await self._respond(text)
        finally:
            self._asker.settle()

    async def _respond(self, text: str) -> Reply:
        state = self.state
        if not text.split():
            return await self._menu_again()
        if asks_for_person(text):
            return await self._hand_over(
                HandoffReason.CALLER_ASKED, self._profile.messages.transfer
            )
        if state.confirming and state.intent:
            return await self._on_confirmation(text)
        answer = yes_no(text)
        if says_goodbye(text) or (state.asked_anything_else and answer is False):
            return Reply(self._profile.messages.goodbye, hangup=True, intent="goodbye")
        if state.intent is None and state.offered and answer is True:
            state.intent = state.offered
        if state.intent is None:
            state.intent = detect_intent(self._profile, text)
            state.asked_anything_else = False
            if state.intent is None:
                return await self._menu_again()
        intent = self._profile.intents[state.intent]
        self._extract(intent, text)
        return await self._advance(intent)

    def is_complete(self, text: str) -> bool:
        """Whether ``text`` is already a whole answer to what the agent just asked: a yes or
        no to a confirmation, or a value that fills the asked slot completely (every digit
        of a phone number, a first and last name, a day and a time). Changes nothing."""
        state = self.state
        if not text.split():
            return False
        if state.confirming:
            return yes_no(text) is not None
        if state.asked_anything_else and (yes_no(text) is False or says_goodbye(text)):
            return True
        if state.intent is None or state.pending is None:
            return False
        spec = self._profile.slots[state.pending]
        if spec.type == "datetime":  # (_when_value would keep a half-given day or time)
            now = self._ctx.now().astimezone(self._zone)
            resolved = resolve_when(text, now, tense=spec.tense, asked=True)
            return resolved.day is not None and (resolved.at is not None or spec.tense == "past")
        value = self._slot_value(state.pending, spec, text, asked=True)
        if spec.type == "name":  # a first name alone: the surname may follow the pause
            return value is not None and len(value.split()) >= 2
        return value is not None

    # -- intents and slots ------------------------------------------------------------------

    def _extract(self, intent: IntentSpec, text: str) -> None:
        # One utterance names one person: the slot asked for, else the first one missing.
        pending = self.state.pending
        name_slots = [s for s in intent.slots if self._profile.slots[s].type == "name"]
        missing_names = [s for s in name_slots if s not in self.state.slots]
        name_target = pending if pending in name_slots else next(iter(missing_names), None)
        for slot_name in [*intent.slots, *intent.optional_slots]:
            known_phone = self._ctx.phone
            if known_phone and self._profile.slots[slot_name].phone:
                # The number the call came from, vouched for by the tenant: never asked.
                self.state.slots.setdefault(slot_name, known_phone)
            spec = self._profile.slots[slot_name]
            if spec.type == "name" and slot_name != name_target:
                continue
            asked = pending == slot_name
            value = self._slot_value(slot_name, spec, text, asked=asked)
            if value is not None:
                if self.state.slots.get(slot_name) != value:
                    self._asker.progress()
                self.state.slots[slot_name] = value

    def _slot_value(self, name: str, spec: SlotSpec, text: str, *, asked: bool) -> Any:
        if spec.type == "datetime":
            return self._when_value(name, spec, text, asked=asked)
        return read_slot(spec, text, asked=asked)

    def _when_value(self, name: str, spec: SlotSpec, text: str, *, asked: bool) -> Any:
        now = self._ctx.now().astimezone(self._zone)
        resolved = resolve_when(text, now, tense=spec.tense, asked=asked)
        partial = self.state.partial_when.setdefault(name, {})
        known = self.state.slots.get(name)
        if isinstance(known, datetime) and not partial:
            # A correction of a moment already given ("actually the 21st, same time")
            # keeps the part it does not change.
            partial.update(day=known.date(), at=known.timetz().replace(tzinfo=None))
        if resolved.day is not None:
            partial["day"] = resolved.day
        if resolved.at is not None:
            partial["at"] = resolved.at
        if resolved.day is None and resolved.at is None:
            return None
        self._asker.progress()
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
            known = state.slots.keys() | state.skipped
            if key in self.results or not all(s in known for s in check.after):
                continue
            result = await self._run_action(check.action)
            if result is None:
                return self._retry_reply
            if _truthy(result, check.stop_if):
                message = self._render(check.stop_message)
                self._reset()
                return Reply(message, hangup=check.hangup_on_stop, intent=state.intent)
        pending = state.pending
        if pending and pending not in state.slots and self._profile.slots[pending].ask_once:
            state.skipped.add(pending)  # asked once, answered with something else
        missing = [s for s in intent.slots if s not in state.slots and s not in state.skipped]
        if missing:
            return await self._ask(missing[0])
        if intent.confirm:
            state.confirming = True
            state.pending = None
            return await self._confirm_again(intent.confirm)
        return await self._complete(intent)

    async def _ask(self, slot: str, question: str | None = None) -> Reply:
        """Ask for ``slot`` (with ``question``, else its prompt): said another way on the
        second ask in a row, with the choices or an example on the third, then a person."""
        self.state.pending = slot
        spec = self._profile.slots[slot]
        line = self._asker.ask(
            f"slot:{slot}",
            question or self._render(spec.prompt),
            self._render(rephrase(slot, spec)),
            self._render(example(slot, spec)),
        )
        if line is None:
            return await self._not_understood()
        return Reply(line, intent=self.state.intent)

    async def _confirm_again(self, confirm: str) -> Reply:
        messages = self._profile.messages
        line = self._asker.ask(
            f"confirm:{self.state.intent}",
            self._render(confirm),
            messages.confirm_again,
            messages.confirm_example,
        )
        return Reply(line, intent=self.state.intent) if line else await self._not_understood()

    async def _menu_again(self) -> Reply:
        messages = self._profile.messages
        line = self._asker.ask(
            "menu", self._render(messages.didnt_catch), messages.rephrase, messages.example
        )
        return Reply(line) if line else await self._not_understood()

    async def _on_confirmation(self, text: str) -> Reply:
        assert self.state.intent is not None
        intent = self._profile.intents[self.state.intent]
        answer = yes_no(text)
        before = dict(self.state.slots)
        self._extract(intent, text)
        if self.state.slots != before:
            # A correction ("no, make it half four") or a detail: confirm the new values.
            return await self._confirm_again(intent.confirm or self._profile.messages.didnt_catch)
        if answer is False:
            self._reset()
            return Reply(self._render(self._profile.messages.declined))
        if answer is True:
            self.state.confirming = False
            return await self._complete(intent)
        return await self._confirm_again(intent.confirm or self._profile.messages.didnt_catch)

    async def _not_understood(self) -> Reply:
        return await self._hand_over(
            HandoffReason.NOT_UNDERSTOOD, self._profile.messages.not_understood
        )

    async def _hand_over(self, reason: HandoffReason, message: str) -> Reply:
        """A person takes the call over: a callback text to the call's number when it is
        known, the message, and a goodbye."""
        messages = self._profile.messages
        lines = [self._render(message)]
        if await text_callback(self._ctx):
            lines.append(messages.callback_texted)
        lines.append(messages.goodbye)
        self._reset()
        return Reply(" ".join(lines), hangup=True, handoff=reason, intent="handoff")

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
            arguments = _without_blanks(render_value(action.arguments, self._context()))
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
            self._retry_reply = await self._ask(action.retry_slot, spoken)
        else:
            self.state.pending = None
            self._retry_reply = Reply(spoken, intent=self.state.intent)
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
        if self.state.intent is not None:
            intent = self._profile.intents[self.state.intent]
            for name in [*intent.optional_slots, *self.state.skipped]:
                spec = self._profile.slots[name]
                context[name] = context[f"{name}_value"] = spec.default
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


def _without_blanks(value: Any) -> Any:
    """Arguments with no empty entries in their lists: a slot the caller did not give
    (its default is empty) leaves no blank party in a conflict check."""
    if isinstance(value, dict):
        return {key: _without_blanks(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_blanks(item) for item in value if item != ""]
    return value
