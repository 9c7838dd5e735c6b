"""``python -m voicemesh.sms``: run the sms service until SIGTERM."""

from __future__ import annotations

from voicemesh.common import run, setup_process
from voicemesh.sms.app import create_app
from voicemesh.sms.settings import SmsSettings


def main() -> None:
    settings = SmsSettings()
    setup_process("sms", settings)
    run(create_app(settings))


if __name__ == "__main__":
    main()
