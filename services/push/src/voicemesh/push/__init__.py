"""voicemesh push. VoIP push service: device registry and APNs pushes that ring CallKit."""

from voicemesh.push.app import create_app
from voicemesh.push.settings import PushSettings

__all__ = ["PushSettings", "create_app"]
