"""``python -m voicemesh.gateway``: run the gateway service until SIGTERM."""

from __future__ import annotations

from voicemesh.common import serve
from voicemesh.gateway.app import create_app
from voicemesh.gateway.settings import GatewaySettings


def main() -> None:
    serve("gateway", GatewaySettings, create_app)


if __name__ == "__main__":
    main()
