"""``python -m voicemesh.transcript``: run the transcript service until SIGTERM."""

from __future__ import annotations

import logging

from voicemesh.common import run, setup_process
from voicemesh.transcript.app import create_app
from voicemesh.transcript.settings import TranscriptSettings


def main() -> None:
    settings = TranscriptSettings()
    setup_process("transcript", settings)
    # aiosqlite logs every statement's parameters at DEBUG: row values (transcript text,
    # possibly PHI) must not reach the log at any level.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))
    run(create_app(settings))


if __name__ == "__main__":
    main()
