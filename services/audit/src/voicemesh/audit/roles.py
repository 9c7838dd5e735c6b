"""The audit tables and the audit service's INSERT-only PostgreSQL role, as SQL.

Run by an administrator (``make deploy`` runs it as ``postgres``): the tables belong to
that administrator, never to a role a service logs in as, and the writer may read and
append to the log but not update, delete, truncate, alter or drop it. It moves the head
row (``audit_head``) with an UPDATE; that row is not the anchor, the signed heads are.

    python -m voicemesh.audit schema --database vm_acme --writer vm_acme_audit | psql -d vm_acme
"""

from __future__ import annotations

import argparse
import re

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from voicemesh.audit.models import HEAD, LOG

__all__ = ["main", "writer_role_sql"]

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _quoted(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a plain PostgreSQL identifier")
    return f'"{name}"'


def _create(table: Table) -> list[str]:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    statements = [str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)).strip()]
    for index in sorted(table.indexes, key=lambda i: str(i.name)):
        statements.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)))
    return statements


def writer_role_sql(*, database: str, writer: str) -> list[str]:
    """Statements (idempotent) that create the tables and grant ``writer`` INSERT only.

    The writer role must exist (it is created with its password apart from this SQL, so
    the password never passes through a command line).
    """
    db, role = _quoted(database), _quoted(writer)
    log, head = _quoted(str(LOG.name)), _quoted(str(HEAD.name))
    return [
        *_create(LOG),
        *_create(HEAD),
        # Tables first made by the service's own role (before this role existed) move to
        # the administrator, and with them every privilege that role had.
        f"ALTER TABLE {log} OWNER TO CURRENT_USER",
        f"ALTER TABLE {head} OWNER TO CURRENT_USER",
        f"REVOKE ALL ON {log}, {head} FROM PUBLIC, {role}",
        f"GRANT CONNECT ON DATABASE {db} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT ON {log} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE ON {head} TO {role}",
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m voicemesh.audit schema``: print the SQL for ``psql``."""
    parser = argparse.ArgumentParser(
        prog="python -m voicemesh.audit schema",
        description="Print the SQL that makes the audit tables and the INSERT-only writer role's "
        "grants (run it as an administrator of the database).",
    )
    parser.add_argument("--database", required=True, help="the tenant's database")
    parser.add_argument("--writer", required=True, help="the role the audit service logs in as")
    args = parser.parse_args(argv)
    print("BEGIN;")
    for statement in writer_role_sql(database=args.database, writer=args.writer):
        print(f"{statement};")
    print("COMMIT;")
    return 0
