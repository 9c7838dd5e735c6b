"""SMS providers behind one interface: the local ``outbox`` and Twilio's Messages REST API.

Provider failures are translated here, once, into the error tree:

* a throttle (HTTP 429) or a provider outage (5xx, network error) is ``TransientError``:
  the job is retried with backoff; a 429 or 503 with ``Retry-After`` is ``Throttled``,
  which carries the wait Twilio asked for (the sender waits at least that long);
* a refusal of this message (4xx such as an invalid or unsubscribed number) is
  ``ProviderRejected``: the job is recorded as failed and not retried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx

from voicemesh.common import PermanentError, TransientError, UnavailableError
from voicemesh.common.contracts.ids import new_id

__all__ = [
    "OutboxProvider",
    "ProviderRejected",
    "Receipt",
    "SmsProvider",
    "Throttled",
    "TwilioProvider",
]

#: Twilio's error code for "the recipient replied STOP to this sender".
TWILIO_UNSUBSCRIBED = 21610


@dataclass(frozen=True)
class Receipt:
    provider_id: str
    status: str


class ProviderRejected(PermanentError):
    """The provider refused this message; sending it again cannot succeed."""

    def __init__(self, message: str, *, provider_code: int | None = None) -> None:
        super().__init__(message)
        self.provider_code = provider_code

    @property
    def unsubscribed(self) -> bool:
        return self.provider_code == TWILIO_UNSUBSCRIBED


class Throttled(TransientError):
    """The provider asked us to slow down, and for how long, if it said (``Retry-After``)."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SmsProvider(Protocol):
    name: str

    async def send(
        self, to: str, body: str, sender: str, *, status_callback: str | None = None
    ) -> Receipt: ...

    async def close(self) -> None: ...


class OutboxProvider:
    """The embedded default: nothing leaves the machine; the message table is the outbox."""

    name = "outbox"

    async def send(
        self, to: str, body: str, sender: str, *, status_callback: str | None = None
    ) -> Receipt:
        return Receipt(provider_id=f"outbox-{new_id()}", status="sent")

    async def close(self) -> None:
        return None


class TwilioProvider:
    """``POST /2010-04-01/Accounts/{sid}/Messages.json`` with HTTP basic auth and a form body."""

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str = "https://api.twilio.com",
        timeout_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("the Twilio provider needs an account SID and an auth token")
        self._sid = account_sid
        self._client = client or httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=httpx.BasicAuth(account_sid, auth_token),
            timeout=timeout_s,
        )

    async def send(
        self, to: str, body: str, sender: str, *, status_callback: str | None = None
    ) -> Receipt:
        form = {"To": to, "From": sender, "Body": body}
        if status_callback:
            form["StatusCallback"] = status_callback
        try:
            response = await self._client.post(
                f"/2010-04-01/Accounts/{self._sid}/Messages.json", data=form
            )
        except httpx.HTTPError as exc:
            raise UnavailableError(f"Twilio unreachable: {type(exc).__name__}") from exc
        if response.status_code in (200, 201):
            payload = response.json()
            return Receipt(provider_id=str(payload["sid"]), status=str(payload.get("status", "")))
        detail, code = _error_of(response)
        retry_after = _retry_after(response)
        if response.status_code == 429 or (response.status_code == 503 and retry_after):
            raise Throttled(f"Twilio throttled the request: {detail}", retry_after)
        if response.status_code >= 500 or response.status_code in (401, 403):
            # An outage, or credentials an operator must fix: retry, then dead-letter.
            raise UnavailableError(f"Twilio answered {response.status_code}: {detail}")
        raise ProviderRejected(
            f"Twilio refused the message ({response.status_code}): {detail}", provider_code=code
        )

    async def close(self) -> None:
        await self._client.aclose()


def _error_of(response: httpx.Response) -> tuple[str, int | None]:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:200], None
    code = payload.get("code") if isinstance(payload, dict) else None
    message = payload.get("message", "") if isinstance(payload, dict) else ""
    return str(message)[:300], int(code) if isinstance(code, int) else None


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds: RFC 9110 allows a number of seconds or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            at = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if at.tzinfo is None:  # an HTTP date is GMT; parsedate leaves "-0000" naive
            at = at.replace(tzinfo=UTC)
        seconds = (at - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None
