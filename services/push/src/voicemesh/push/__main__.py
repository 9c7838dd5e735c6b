"""``python -m voicemesh.push``: run the push service until SIGTERM."""

from __future__ import annotations

from voicemesh.common import run, setup_process
from voicemesh.push.app import create_app
from voicemesh.push.settings import PushSettings


def main() -> None:
    settings = PushSettings()
    setup_process("push", settings)
    run(create_app(settings))


if __name__ == "__main__":
    main()
