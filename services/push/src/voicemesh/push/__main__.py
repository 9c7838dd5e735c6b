"""``python -m voicemesh.push``: run the push service until SIGTERM."""

from __future__ import annotations

from voicemesh.common import serve
from voicemesh.push.app import create_app
from voicemesh.push.settings import PushSettings


def main() -> None:
    serve("push", PushSettings, create_app)


if __name__ == "__main__":
    main()
