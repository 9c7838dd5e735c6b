"""voicemesh sms. SMS service: outbound text messages, opt-outs and delivery status."""

from voicemesh.sms.app import create_app
from voicemesh.sms.settings import SmsSettings

__all__ = ["SmsSettings", "create_app"]
