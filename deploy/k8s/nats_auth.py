"""Generate the NATS permission file, ``base/nats/auth.conf``, for every tenant deployed.

One user per tenant, fenced to ``vm.<tenant>.>``, its own reply inboxes
(``_INBOX_<tenant>.>``) and the JetStream API subjects of exactly its own durable consumers;
a consumer may only be created with a filter inside the tenant's subjects. The shared edge
services (gateway, push) and the stream provisioning job get their own users.

Passwords are never in the file: each user's password is the NATS pod's environment
variable ``VM_NATS_PASSWORD_<USER>`` (from the Secret ``nats-users``). The same file is
mounted by the NATS StatefulSet, checked by ``policy.py`` and loaded into a real
nats-server by ``tests/security/test_nats_permissions.py``.

    uv run python deploy/k8s/nats_auth.py           # rewrite base/nats/auth.conf
    uv run python deploy/k8s/nats_auth.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from voicemesh.common.contracts import subjects
from voicemesh.common.contracts.streams import CONSUMERS, ConsumerSpec, consumer
from voicemesh.common.contracts.tenancy import Vertical, validate_tenant_id

HERE = Path(__file__).resolve().parent
AUTH_CONF = HERE / "base" / "nats" / "auth.conf"
TENANTS_ENV = HERE / "base" / "tenants.env"

#: The six containers of a tenant's agent pod share one NATS user.
POD_SERVICES = ("agent", "crm", "calendar", "sms", "audit", "transcript")
ADMIN_USER = "admin"


@dataclass(frozen=True)
class EdgeConsumers:
    """The durable consumers a shared edge service (serving every tenant) uses: ``shared``
    ones it reads for all tenants at once, ``per_tenant`` ones it opens for each tenant."""

    shared: tuple[tuple[str, str], ...] = ()
    per_tenant: tuple[tuple[str, str], ...] = ()

    def subjects(self, tenants: Iterable[str]) -> list[str]:
        out = consumer_api_subjects([consumer(*c) for c in self.shared], subjects.ANY)
        for tenant in sorted(set(tenants)):
            out += consumer_api_subjects([consumer(*c) for c in self.per_tenant], tenant)
        return out


#: The edge services' users. The gateway reads no stream. Push takes ring jobs from the
#: all-tenant PUSH work queue (``push-jobs``) and reads each tenant's lifecycle events on
#: that tenant's own durable, ``push-calls-<tenant>`` (its lanes: services/push lanes.py).
EDGE_USERS: dict[str, EdgeConsumers] = {
    "gateway": EdgeConsumers(),
    "push": EdgeConsumers(shared=(("push", "jobs"),), per_tenant=(("push", "calls"),)),
}

_PASSWORD_REF = re.compile(r'("password":\s*)\$([A-Z0-9_]+)')


@dataclass(frozen=True)
class NatsUser:
    """One NATS user and what it may publish and subscribe to."""

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    tenant: str | None = None

    @property
    def password_env(self) -> str:
        return password_env(self.name)

    def conf_line(self) -> str:
        body = {
            "user": self.name,
            "password": "__PASSWORD__",
            "permissions": {
                "publish": {"allow": list(self.publish)},
                "subscribe": {"allow": list(self.subscribe)},
            },
        }
        # An unquoted $NAME is a NATS config variable, resolved from the server's environment.
        return json.dumps(body).replace('"__PASSWORD__"', f"${self.password_env}")


def password_env(user: str) -> str:
    """The environment variable of the NATS pods that holds ``user``'s password."""
    return "VM_NATS_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", user.upper())


def consumer_api_subjects(specs: Iterable[ConsumerSpec], tenant: str) -> list[str]:
    """JetStream API subjects the durable consumers ``specs`` of ``tenant`` need.

    Info, fetch (``MSG.NEXT``) and acks on exactly those durables; create only with a filter
    subject inside the tenant's own subjects (the server checks that the filter in the
    request matches the one in the subject), so a tenant cannot point a consumer at another
    tenant's messages. Never the legacy ``CONSUMER.DURABLE.CREATE``, whose subject names no
    filter: nats-py creates named consumers through ``CONSUMER.CREATE`` (servers >= 2.9).
    """
    fence = f"{subjects.ROOT}.>" if tenant == subjects.ANY else subjects.all_tenant_subjects(tenant)
    out: list[str] = []
    for spec in specs:
        durable = spec.durable(tenant)
        out += [
            f"$JS.API.CONSUMER.INFO.{spec.stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{spec.stream}.{durable}.{fence}",
            f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{durable}",
            f"$JS.ACK.{spec.stream}.{durable}.>",
        ]
    return out


def pod_consumers() -> list[ConsumerSpec]:
    """The durable consumers of the services in a tenant's pod."""
    return [spec for spec in CONSUMERS if spec.service in POD_SERVICES]


def tenant_user(tenant: str) -> NatsUser:
    """The user of one tenant's agent pod: its subjects, its inboxes, its consumers."""
    validate_tenant_id(tenant)
    own = [subjects.all_tenant_subjects(tenant), f"{subjects.inbox_prefix(tenant)}.>"]
    return NatsUser(
        name=tenant,
        publish=(*own, *consumer_api_subjects(pod_consumers(), tenant)),
        subscribe=tuple(own),
        tenant=tenant,
    )


def edge_user(name: str, tenants: Iterable[str] = ()) -> NatsUser:
    """A shared edge service (gateway, push): every tenant's subjects, no stream admin, and
    exactly the consumers it uses (``EDGE_USERS``) for every deployed tenant."""
    every = [f"{subjects.ROOT}.>", f"{subjects.inbox_prefix(subjects.ANY)}.>"]
    consumers = EDGE_USERS[name].subjects(tenants)
    return NatsUser(name=name, publish=(*every, *consumers), subscribe=tuple(every))


def admin_user() -> NatsUser:
    """The stream provisioning job (``voicemesh streams apply``): the whole JetStream API."""
    return NatsUser(name=ADMIN_USER, publish=(">",), subscribe=(">",))


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def deployed_tenants(root: Path = HERE) -> dict[str, str]:
    """Tenant -> vertical for every vertical overlay (its demo tenant) and tenant overlay."""
    found: dict[str, str] = {}
    for env_file in [*root.glob("verticals/*/tenant.env"), *root.glob("tenants/*/tenant.env")]:
        values = read_env_file(env_file)
        tenant = values.get("VOICEMESH_TENANT", "")
        _, _, vertical = values.get("VOICEMESH_TENANTS", "").partition(":")
        if not tenant or values.get("VOICEMESH_TENANTS") != f"{tenant}:{vertical}":
            raise ValueError(
                f"{env_file}: needs VOICEMESH_TENANT and VOICEMESH_TENANTS=<it>:<vertical>"
            )
        if values.get("VOICEMESH_NATS_USER") != tenant:
            raise ValueError(f"{env_file}: VOICEMESH_NATS_USER must be the tenant id")
        found[validate_tenant_id(tenant)] = Vertical(vertical).value
    return dict(sorted(found.items()))


def render_tenants_env(tenants: dict[str, str]) -> str:
    """``VOICEMESH_TENANTS`` for the edge services, which serve every deployed tenant."""
    spec = ",".join(f"{t}:{v}" for t, v in sorted(tenants.items()))
    return (
        f"# Generated by deploy/k8s/nats_auth.py with nats/auth.conf.\nVOICEMESH_TENANTS={spec}\n"
    )


def all_users(tenants: Iterable[str]) -> list[NatsUser]:
    tenants = sorted(set(tenants))
    users = [admin_user(), *(edge_user(name, tenants) for name in EDGE_USERS)]
    names = {u.name for u in users}
    for tenant in tenants:
        if tenant in names:
            raise ValueError(f"tenant id {tenant!r} clashes with a service user")
        users.append(tenant_user(tenant))
    return users


def render(tenants: Iterable[str]) -> str:
    """The text of ``auth.conf`` for ``tenants``."""
    lines = [
        "# Generated by deploy/k8s/nats_auth.py from the vertical and tenant overlays.",
        "# Do not edit: run `uv run python deploy/k8s/nats_auth.py`. Passwords are the",
        "# NATS pods' VM_NATS_PASSWORD_* environment variables (Secret nats-users).",
        "authorization {",
        "  users = [",
        *(f"    {user.conf_line()}" for user in all_users(tenants)),
        "  ]",
        "}",
    ]
    return "\n".join(lines) + "\n"


def parse(text: str) -> list[NatsUser]:
    """Read back a generated ``auth.conf`` (for the policy checks and the tests)."""
    users: list[NatsUser] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("{"):
            continue
        data = json.loads(_PASSWORD_REF.sub(r'\1"$\2"', line))
        perms = data["permissions"]
        name = str(data["user"])
        if data["password"] != f"${password_env(name)}":
            raise ValueError(f"user {name!r}: password must be ${password_env(name)}")
        users.append(
            NatsUser(
                name=name,
                publish=tuple(perms["publish"]["allow"]),
                subscribe=tuple(perms["subscribe"]["allow"]),
                tenant=None if name == ADMIN_USER or name in EDGE_USERS else name,
            )
        )
    return users


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if auth.conf is stale")
    args = parser.parse_args(argv)
    tenants = deployed_tenants()
    wanted = {AUTH_CONF: render(tenants), TENANTS_ENV: render_tenants_env(tenants)}
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(HERE)} is stale: run deploy/k8s/nats_auth.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
