"""voicemesh gateway. WebRTC gateway: signaling, call audio to and from NATS, the /demo page."""

from voicemesh.gateway.app import create_app
from voicemesh.gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
