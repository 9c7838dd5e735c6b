"""``python -m voicemesh.openaisim --port N``: run the local OpenAI-compatible server."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from voicemesh.openaisim.app import create_app

DEFAULT_KEY = "sk-openaisim"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m voicemesh.openaisim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument(
        "--api-key",
        action="append",
        help="a key clients must send as 'Authorization: Bearer <key>' (repeatable; default: "
        f"$OPENAISIM_API_KEYS, comma-separated, else {DEFAULT_KEY})",
    )
    parser.add_argument(
        "--phrases",
        type=Path,
        help="a file of expected utterances, one a line: transcription then recognises "
        "exactly these sentences (default: pocketsphinx's general English model)",
    )
    parser.add_argument(
        "--voice-speed",
        type=float,
        default=0.0,
        help="produce Realtime audio at this multiple of real time, as a live model does "
        "(default 0: each response's audio at once)",
    )
    args = parser.parse_args(argv)
    if args.voice_speed < 0:
        parser.error("--voice-speed must be 0 or more")
    keys = args.api_key or [
        k.strip() for k in os.environ.get("OPENAISIM_API_KEYS", DEFAULT_KEY).split(",") if k.strip()
    ]
    phrases = None
    if args.phrases is not None:
        lines = args.phrases.read_text(encoding="utf-8").splitlines()
        phrases = [line.strip() for line in lines if line.strip()]
    app = create_app(keys, phrases, voice_speed=args.voice_speed)
    uvicorn.run(app, host=args.host, port=args.port, ws="websockets-sansio", log_level="warning")


if __name__ == "__main__":
    main()
