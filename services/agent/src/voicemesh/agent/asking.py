"""How the agent asks again without looping: a question is never put the same way more than
twice in a row.

``Asker`` counts how often in a row the dialog has asked one thing (a slot, a confirmation,
what the caller wants). The first time it says the question; the second time the line said
another way (``rephrase``); the third, the choices or an example of an answer
(``example``), and round again. After three asks in a row that taught it nothing (the
caller's answers filled no slot) it gives up, and the dialog hands the call to a person.
"""

from __future__ import annotations

from dataclasses import dataclass

from voicemesh.agent.profiles import SlotSpec

__all__ = ["MAX_ASKS", "Asker", "example", "rephrase"]

#: how many times in a row one thing is asked before a person takes over
MAX_ASKS = 3


def _listed(options: list[str]) -> str:
    spoken = [option.replace("_", " ") for option in options]
    if len(spoken) < 2:
        return "".join(spoken)
    return f"{', '.join(spoken[:-1])} or {spoken[-1]}"


#: per kind of slot: the question said another way, and how an answer sounds
_WAYS: dict[str, tuple[str, str]] = {
    "choice": ("Sorry, I didn't catch which {slot} you'd like.", "You can choose {choices}."),
    "datetime": (
        "Sorry, which day would suit you, and at about what time?",
        "For example, you can say Tuesday at 3 pm.",
    ),
    "past": (
        "Sorry, on what day did it happen?",
        "For example, you can say yesterday, or last Monday.",
    ),
    "name": (
        "Sorry, could you tell me your first and last name?",
        "For example, you can say: my name is Jane Smith.",
    ),
    "address": (
        "Sorry, which street is the property on?",
        "For example, you can say: 12 Elm Street.",
    ),
    "phone": (
        "Sorry, could you say the phone number again, a few digits at a time?",
        "Please say it one digit at a time, for example five five five, one two three, "
        "four five six seven.",
    ),
    "digits": (
        "Sorry, could you say the {digits} digit number again, a few digits at a time?",
        "Please say the {digits} digits one at a time, for example {sample}.",
    ),
}
_SAMPLE = "four one two five five one two three four five".split()


def _kind(spec: SlotSpec) -> str:
    if spec.type == "datetime" and spec.tense == "past":
        return "past"
    if spec.type == "digits":
        return "phone" if spec.phone else "digits"
    return spec.type


_COUNTS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def _said(line: str, slot: str, spec: SlotSpec) -> str:
    return line.format(
        slot=slot.replace("_", " "),
        choices=_listed(list(spec.choices)),
        digits=_COUNTS[spec.digits] if spec.digits < len(_COUNTS) else spec.digits,
        sample=" ".join(_SAMPLE[: spec.digits]),
    )


def rephrase(slot: str, spec: SlotSpec) -> str:
    """The question for ``slot`` said another way."""
    return spec.reprompt or _said(_WAYS[_kind(spec)][0], slot, spec)


def example(slot: str, spec: SlotSpec) -> str:
    """The choices, or how an answer to ``slot`` sounds."""
    return spec.example or _said(_WAYS[_kind(spec)][1], slot, spec)


@dataclass
class Asker:
    """What the dialog last asked, how many times in a row, and how many of those in a row
    the caller's answers taught it nothing."""

    key: str | None = None
    times: int = 0
    stuck: int = 0
    last: str = ""
    asked_now: bool = False
    learned: bool = False

    def progress(self) -> None:
        """The caller's line told the dialog something (it filled a slot)."""
        self.learned = True

    def ask(self, key: str, question: str, again: str, hint: str) -> str | None:
        """The line to say for asking ``key`` now, or ``None``: time for a person."""
        same = key == self.key
        self.times = self.times + 1 if same else 1
        self.stuck = self.stuck + 1 if same and not self.learned else 1
        self.key, self.asked_now, self.learned = key, True, False
        if self.stuck > MAX_ASKS:
            return None
        turn = (self.times - 1) % 3
        if turn == 0 or (turn == 1 and question != self.last):
            line = question if question != self.last else again
        else:
            line = again if turn == 1 else hint
        self.last = line
        return line

    def settle(self) -> None:
        """After a reply: one that asked nothing ends the run of asks."""
        if not self.asked_now:
            self.key, self.times, self.stuck, self.last = None, 0, 0, ""
        self.asked_now = self.learned = False
