"""voicemesh phone: a simulated iPhone for the CallKit/PushKit flow.

Receives VoIP pushes (from the APNs simulator), answers like CallKit, talks WebRTC to the
gateway; ``PhoneCall`` speaks scripted lines on cue (``CallerVoice``).
"""

from voicemesh.phone.phone import (
    AnswerReport,
    CallRefused,
    NotReportable,
    PhoneCall,
    SimulatedPhone,
    check_reportable,
    dial,
)
from voicemesh.phone.voice import CallerVoice, synthesize

__all__ = [
    "AnswerReport",
    "CallRefused",
    "CallerVoice",
    "NotReportable",
    "PhoneCall",
    "SimulatedPhone",
    "check_reportable",
    "dial",
    "synthesize",
]
