"""``python -m voicemesh.sms``: run the sms service until SIGTERM."""

from __future__ import annotations

from voicemesh.common import serve
from voicemesh.sms.app import create_app
from voicemesh.sms.settings import SmsSettings


def main() -> None:
    serve("sms", SmsSettings, create_app)


if __name__ == "__main__":
    main()
