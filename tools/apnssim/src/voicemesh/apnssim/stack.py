"""The APNs simulator as a helper of the local stack (``make run``).

``extend_stack`` is listed in the launcher's ``EXTENSIONS``: it makes this run's TLS
certificate and one provider key per demo tenant, starts the simulator with those keys, and
points the push service at it with ``VOICEMESH_APNS_*`` settings.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from voicemesh.apnssim.certs import make_provider_key, make_tls_material
from voicemesh.common.contracts.tenancy import TenantRegistry
from voicemesh.testkit.apns import write_credentials
from voicemesh.testkit.embedded import free_port

__all__ = ["DEMO_BUNDLE_ID", "extend_stack"]

DEMO_BUNDLE_ID = "dev.voicemesh.phone"


def extend_stack(stack: Any) -> None:
    """Add the ``apns-sim`` helper and the push service's APNs settings to ``stack``."""
    from voicemesh.cli.stack import Component  # the launcher imports us, not the reverse

    base = stack.data_dir / "apns"
    tls = make_tls_material(base / "tls")
    credentials = base / "credentials"
    credentials.mkdir(parents=True, exist_ok=True)
    accepted = []
    for tenant in TenantRegistry.demo():
        key = make_provider_key()
        write_credentials(credentials, tenant.id, key, DEMO_BUNDLE_ID)
        accepted.append(
            {"key_id": key.key_id, "team_id": key.team_id, "public_key": key.public_pem}
        )
    keys_file = base / "accepted-keys.json"
    keys_file.write_text(json.dumps(accepted, indent=2))
    port, admin_port = free_port(), free_port()
    stack.helpers.append(
        Component(
            "apns-sim",
            [
                sys.executable,
                "-m",
                "voicemesh.apnssim",
                "--port",
                str(port),
                "--admin-port",
                str(admin_port),
                "--tls-dir",
                str(base / "tls"),
                "--cert",
                str(tls.cert_path),
                "--key",
                str(tls.key_path),
                "--ca",
                str(tls.ca_path),
                "--keys-file",
                str(keys_file),
            ],
            {"PYTHONUNBUFFERED": "1"},
            http_port=admin_port,
            url=f"http://127.0.0.1:{admin_port}",
        )
    )
    stack.service_env.update(
        {
            "VOICEMESH_APNS_HOST": "localhost",
            "VOICEMESH_APNS_PORT": str(port),
            "VOICEMESH_APNS_CA_FILE": str(tls.ca_path),
            "VOICEMESH_APNS_CREDENTIALS_DIR": str(credentials),
            "VOICEMESH_APNSSIM_URL": f"http://127.0.0.1:{admin_port}",
        }
    )
