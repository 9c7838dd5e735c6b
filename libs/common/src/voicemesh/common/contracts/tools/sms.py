"""The sms service's tool: queue a text.

A tenant's backend (a request with no call) names the recipient and may write the body. A
request made on a call (the agent's, whatever its model says) names neither: the text goes to
the call's verified number, and its body is one of the tenant's templates (``SmsTemplate``)
filled with typed fields, so a caller cannot talk the model into texting someone else, or
into texting words of the caller's choosing.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, Field, model_validator

from voicemesh.common.contracts.tools.base import (
    Id,
    IdempotencyKey,
    Phone,
    ToolArgs,
    ToolOutput,
)

__all__ = [
    "SMS_TEMPLATES",
    "SendSmsArgs",
    "SendSmsResult",
    "SmsTemplate",
]

#: A person's name inside a template: letters and a few marks, never a sentence or a link.
PersonName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z '-]{0,39}$")]


class SmsTemplate(StrEnum):
    """The texts a call may send; ``SMS_TEMPLATES`` has their words."""

    APPOINTMENT_BOOKED = "appointment_booked"
    CLAIM_FILED = "claim_filed"
    CALLBACK = "callback"


#: Each template's words and the fields it needs (``business`` is the tenant's name).
SMS_TEMPLATES: dict[SmsTemplate, tuple[str, tuple[str, ...]]] = {
    SmsTemplate.APPOINTMENT_BOOKED: (
        "{business}your appointment{with_staff} is booked for {start}. Reply STOP to opt out.",
        ("start",),
    ),
    SmsTemplate.CLAIM_FILED: (
        "{business}claim {claim_id} is filed. An adjuster will call you. Reply STOP to opt out.",
        ("claim_id",),
    ),
    SmsTemplate.CALLBACK: (
        "{business}thank you for calling. We will call you back soon. Reply STOP to opt out.",
        (),
    ),
}


class SendSmsArgs(ToolArgs):
    #: the recipient; only a request with no call names one (a call's text goes to its
    #: verified number)
    to: Phone | None = None
    #: free text; only a request with no call writes one (a call's text is a template)
    body: str | None = Field(default=None, min_length=1, max_length=1600)
    template: SmsTemplate | None = None
    start: AwareDatetime | None = Field(default=None, description="the appointment's start")
    staff: PersonName | None = Field(default=None, description="who the appointment is with")
    claim_id: Id | None = None
    purpose: str = Field(default="agent", pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    idempotency_key: IdempotencyKey

    @model_validator(mode="after")
    def _body_or_template(self) -> SendSmsArgs:
        if (self.body is None) == (self.template is None):
            raise ValueError("give either a template or a body")
        if self.template is not None:
            missing = [f for f in SMS_TEMPLATES[self.template][1] if getattr(self, f) is None]
            if missing:
                raise ValueError(f"the {self.template.value} template needs {', '.join(missing)}")
        return self

    def text(self, business: str, time_zone: str) -> str:
        """The message: the body, or the template filled with this tenant's name and zone."""
        if self.template is None:
            assert self.body is not None  # the validator asks for one of the two
            return self.body
        words, _ = SMS_TEMPLATES[self.template]
        start = self.start.astimezone(ZoneInfo(time_zone)) if self.start else None
        text = words.format(
            business=f"{business}: " if business else "",
            with_staff=f" with {self.staff}" if self.staff else "",
            start=_spoken(start) if start else "",
            claim_id=self.claim_id or "",
        )
        return text if business else text[0].upper() + text[1:]


def _spoken(moment: datetime) -> str:
    hour = moment.hour % 12 or 12
    minutes = f":{moment.minute:02d}" if moment.minute else ""
    return f"{moment:%A, %B} {moment.day} at {hour}{minutes} {'PM' if moment.hour >= 12 else 'AM'}"


class SendSmsResult(ToolOutput):
    idempotency_key: str
    queued: bool
