"""``python -m voicemesh.gateway``: run the gateway service until SIGTERM."""

from __future__ import annotations

from voicemesh.common import run, setup_process
from voicemesh.gateway.app import create_app
from voicemesh.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    setup_process("gateway", settings)
    run(create_app(settings))


if __name__ == "__main__":
    main()
