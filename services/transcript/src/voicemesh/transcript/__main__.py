"""``python -m voicemesh.transcript``: run the transcript service until SIGTERM."""

from __future__ import annotations

from voicemesh.common import serve
from voicemesh.transcript.app import create_app
from voicemesh.transcript.settings import TranscriptSettings


def main() -> None:
    serve("transcript", TranscriptSettings, create_app)


if __name__ == "__main__":
    main()
