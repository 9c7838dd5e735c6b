"""What the call session does around every provider's turn: safety before everything, and
no line a third time.

Every caller transcript, from any provider, is screened here before the dialog sees it.
``screen`` runs ``safety.detect`` for the profile's vertical (and the profile's own extra
``crisis_words``). A detection is answered at once with the profile's safety message and a
hand-off: ``CRISIS`` for self-harm, ``EMERGENCY`` for a medical emergency or a danger to
someone's life. The matched phrase may be health information: it is never logged.
``RepeatGuard`` vets every reply: one that would repeat a line said twice in a row becomes
a hand-off to a person.
"""

from __future__ import annotations

import logging
import re

from voicemesh.agent.normalize import fold
from voicemesh.agent.profiles import Profile
from voicemesh.agent.providers.base import CallContext, Reply, prepended
from voicemesh.agent.safety import detect
from voicemesh.common.contracts.events import HandoffReason

__all__ = ["SAFETY_INTENT", "RepeatGuard", "screen", "text_callback"]

log = logging.getLogger(__name__)

#: the intent a safety reply carries (span attribute, never the phrase)
SAFETY_INTENT = "safety"


def _listed(text: str, phrases: list[str]) -> bool:
    spoken = fold(text)
    return any(re.search(rf"\b{re.escape(fold(p))}\b", spoken) for p in phrases if p.strip())


def screen(profile: Profile, text: str) -> Reply | None:
    """The safety reply to ``text``, or ``None`` when it states no crisis or emergency."""
    policies = profile.policies
    found = detect(text, profile.vertical)
    if found is None and not _listed(text, policies.crisis_words):
        return None
    if found is not None and found.category != "self_harm":
        return Reply(
            policies.emergency_message, handoff=HandoffReason.EMERGENCY, intent=SAFETY_INTENT
        )
    message = policies.crisis_message or policies.emergency_message
    return Reply(message, handoff=HandoffReason.CRISIS, intent=SAFETY_INTENT)


async def text_callback(context: CallContext) -> bool:
    """Text the caller that a person will call back (to the call's number, when known);
    whether the sms service took it."""
    if not context.phone:
        return False
    key = f"{context.call_id}:callback"
    arguments = {"template": "callback", "purpose": "callback"}
    try:
        result = await context.tools.call("sms", "send", arguments, idempotency_key=key)
    except Exception as exc:  # the hand-off matters more than the text
        log.warning("callback text failed (%s)", type(exc).__name__)
        return False
    return result.ok


class RepeatGuard:
    """No line a third time in a row, whatever the provider: a reply that would say again
    what the agent has just said twice is replaced by a hand-off to a person (with a
    callback text). A streamed reply is judged by its first sentence; a reply streamed as
    voice only once said, the hand-off then following it at once."""

    def __init__(self, context: CallContext) -> None:
        self._ctx = context
        self._said: list[str] = []

    def _twice(self) -> str | None:
        last = self._said[-2:]
        return last[0] if len(last) == 2 and last[0] == last[1] and last[0] else None

    def said(self, text: str) -> None:
        self._said = [*self._said[-2:], " ".join(text.split())]

    @property
    def looped(self) -> bool:
        """The agent has said one line three times in a row (a voice-streamed reply)."""
        return len(self._said) == 3 and len(set(self._said)) == 1 and bool(self._said[0])

    async def vet(self, reply: Reply) -> Reply:
        repeated = self._twice()
        if repeated is None or reply.speech is not None:
            return reply
        if reply.sentences is not None:
            try:
                first = await anext(reply.sentences)
            except StopAsyncIteration:
                return reply
            if not repeated.startswith(" ".join(first.split())):
                reply.sentences = prepended(first, reply.sentences)
                return reply
            await reply.sentences.aclose()
        elif " ".join(reply.text.split()) != repeated:
            return reply
        return await self.hand_off()

    async def hand_off(self) -> Reply:
        messages = self._ctx.profile.messages
        lines = [messages.not_understood]
        if await text_callback(self._ctx):
            lines.append(messages.callback_texted)
        lines.append(messages.goodbye)
        return Reply(" ".join(lines), hangup=True, handoff=HandoffReason.NOT_UNDERSTOOD)
