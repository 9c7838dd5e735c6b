"""Generate Redis's ACL file: one user per tenant, fenced to its own keys, and the edge users.

Redis holds the gateway's call and worker registry (``voicemesh:gateway:*``), push's
ringing calls and device caches (``voicemesh:push:*``) and the per-tenant rate-limit
counters (``voicemesh:ratelimit:<tenant>:*``, ``runtime/ratelimit.py``). Every process
logs in as its own ACL user:

- ``<tenant>`` (the six containers of the tenant's pod): only its own rate-limit counters
  (the sms service's sending limit). It cannot read or rewrite another tenant's keys nor
  the gateway's registry, which decides where a call's signaling goes;
- ``gateway``: its registry and every tenant's rate limits (it limits signaling);
- ``push``: its calls and devices and every tenant's rate limits (device registration);
- ``admin``: everything; only the Redis pod itself uses it (probes, ``ACL LOAD``).

The ``default`` user is off. No user may list keys (``KEYS``, ``SCAN``, ``RANDOMKEY``) or
run dangerous commands (``FLUSHALL``, ``CONFIG``, ``DEBUG``, ``SCRIPT FLUSH`` ...); a
script runs with its caller's key patterns. Passwords never appear: each user's line
carries the SHA-256 of its password (``#<hex>``), as Redis's ACL file allows.

``deploy.sh`` keeps the passwords in the Secret ``voicemesh/redis-users`` (one key per user)
and the rendered file in ``voicemesh/redis-acl`` (mounted by ``base/redis.yaml``):

    kubectl -n voicemesh get secret redis-users -o json | \\
        uv run python deploy/k8s/redis_acl.py > users.acl
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from collections.abc import Mapping

from voicemesh.common.contracts.tenancy import validate_tenant_id
from voicemesh.common.runtime.ratelimit import tenant_key_pattern

ADMIN_USER = "admin"
#: The key prefixes of the shared edge services (services/gateway registry.py,
#: services/push calls.py and devices.py); tests/deploy checks they still match.
EDGE_KEYS = {
    "gateway": ("voicemesh:gateway:*", tenant_key_pattern("*")),
    "push": ("voicemesh:push:*", tenant_key_pattern("*")),
}
#: What a service user may run, on its own keys only: reads, writes, transactions and
#: scripts; no key listing and nothing in @dangerous (which also covers SCRIPT FLUSH).
COMMANDS = (
    "-@all",
    "+@read",
    "+@write",
    "+@transaction",
    "+@connection",
    "+select",
    "+ping",
    "+eval",
    "+evalsha",
    "+script|load",
    "+script|exists",
    "-@dangerous",
    "-scan",
    "-randomkey",
)

_HEX = re.compile(r"^[0-9a-f]{64}$")


def password_hash(password: str) -> str:
    """The ``#<hex>`` form of ``password`` in an ACL file."""
    if not password or any(c.isspace() for c in password):
        raise ValueError("a Redis password must be non-empty and without whitespace")
    return hashlib.sha256(password.encode()).hexdigest()


def key_patterns(user: str) -> tuple[str, ...]:
    """The keys ``user`` may touch (``admin``: all of them)."""
    if user == ADMIN_USER:
        return ("*",)
    if user in EDGE_KEYS:
        return EDGE_KEYS[user]
    return (tenant_key_pattern(validate_tenant_id(user)),)


def user_line(user: str, password: str) -> str:
    """One ``user`` line of the ACL file."""
    digest = password_hash(password)
    assert _HEX.match(digest)
    keys = " ".join(f"~{p}" for p in key_patterns(user))
    if user == ADMIN_USER:
        return f"user {user} on #{digest} {keys} &* +@all"
    return f"user {user} on #{digest} resetchannels {keys} {' '.join(COMMANDS)}"


def render(passwords: Mapping[str, str]) -> str:
    """The ACL file for these users (user -> password); ``admin`` must be among them."""
    if ADMIN_USER not in passwords:
        raise ValueError("the admin user's password is missing")
    lines = ["user default off resetkeys resetchannels -@all"]
    lines += [user_line(user, passwords[user]) for user in sorted(passwords)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Read ``kubectl get secret redis-users -o json`` on stdin, print the ACL file."""
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    data: dict[str, str] = json.load(sys.stdin).get("data") or {}
    passwords = {user: base64.b64decode(value).decode() for user, value in data.items()}
    sys.stdout.write(render(passwords))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
