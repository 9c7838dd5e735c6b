"""``python -m voicemesh.audit``: run the audit service until SIGTERM.

``python -m voicemesh.audit verify [--tenant T] [--database-url URL]`` verifies the hash
chain instead (exit 0 OK, 1 a bad row, 2 the database cannot be read).
"""

from __future__ import annotations

import sys

from voicemesh.audit.app import create_app
from voicemesh.audit.settings import AuditSettings
from voicemesh.common import serve


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["verify"]:
        from voicemesh.audit.verify import main as verify

        raise SystemExit(verify(args[1:]))
    serve("audit", AuditSettings, create_app)


if __name__ == "__main__":
    main()
