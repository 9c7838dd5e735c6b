"""What the simulator does with a device token: chosen by the token's first 8 hex digits.

A real device token is 64 hex digits; the simulator accepts any even-length hex token of
64 to 200 digits. Tokens whose prefix is not listed here behave like a healthy device.
``token_for`` makes a valid token with a given behaviour.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

__all__ = ["PREFIXES", "Behaviour", "behaviour_of", "token_for"]


class Behaviour(StrEnum):
    OK = "ok"
    BAD_DEVICE_TOKEN = "bad_device_token"  # noqa: S105 - a name. 400 BadDeviceToken
    NOT_FOR_TOPIC = "not_for_topic"  # 400 DeviceTokenNotForTopic
    UNREGISTERED = "unregistered"  # 410 Unregistered + timestamp
    EXPIRED_TOKEN = "expired_token"  # noqa: S105 - a name. 410 ExpiredToken
    THROTTLED = "throttled"  # 429 TooManyRequests
    SERVER_ERROR = "server_error"  # 500 InternalServerError
    UNAVAILABLE = "unavailable"  # 503 ServiceUnavailable
    FLAKY = "flaky"  # 503 for the first two requests, then 200
    NEVER_ANSWERS = "never_answers"  # the stream never gets a response
    SLOW = "slow"  # 200 after the simulator's ``slow_s``


PREFIXES: dict[str, Behaviour] = {
    "badd0000": Behaviour.BAD_DEVICE_TOKEN,
    "badd0001": Behaviour.NOT_FOR_TOPIC,
    "41000000": Behaviour.UNREGISTERED,
    "41000001": Behaviour.EXPIRED_TOKEN,
    "42900000": Behaviour.THROTTLED,
    "50000000": Behaviour.SERVER_ERROR,
    "50300000": Behaviour.UNAVAILABLE,
    "50300f1a": Behaviour.FLAKY,
    "00000000": Behaviour.NEVER_ANSWERS,
    "5105105a": Behaviour.SLOW,
}
_BY_BEHAVIOUR = {b: p for p, b in PREFIXES.items()}


def behaviour_of(token: str) -> Behaviour:
    return PREFIXES.get(token[:8].lower(), Behaviour.OK)


def token_for(behaviour: Behaviour = Behaviour.OK, seed: str | None = None) -> str:
    """A 64-digit hex device token that makes the simulator behave as ``behaviour``."""
    tail = hashlib.sha256((seed or secrets.token_hex(16)).encode()).hexdigest()
    if behaviour is Behaviour.OK:
        token = tail
        while behaviour_of(token) is not Behaviour.OK:
            token = hashlib.sha256(token.encode()).hexdigest()
        return token
    return _BY_BEHAVIOUR[behaviour] + tail[8:]
