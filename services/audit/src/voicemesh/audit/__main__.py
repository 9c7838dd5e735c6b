"""``python -m voicemesh.audit``: run the audit service until SIGTERM.

``python -m voicemesh.audit verify [--tenant T] [--database-url URL] [--public-key PEM
(--signed-heads FILE | --heads-from-nats)]`` verifies the hash chain instead (exit 0 OK,
1 a bad row or signed head, 2 the database or the heads cannot be read).
``python -m voicemesh.audit schema --database DB --writer ROLE`` prints the SQL of the
tables and the INSERT-only writer role; ``keygen DIR`` writes a new signing key pair.
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
    if args[:1] == ["schema"]:
        from voicemesh.audit.roles import main as schema

        raise SystemExit(schema(args[1:]))
    if args[:1] == ["keygen"]:
        from voicemesh.audit.anchor import keygen

        raise SystemExit(keygen(args[1:]))
    serve("audit", AuditSettings, create_app)


if __name__ == "__main__":
    main()
