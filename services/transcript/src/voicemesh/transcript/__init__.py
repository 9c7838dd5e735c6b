"""voicemesh transcript. Transcript service: durable per-call transcripts, search and export."""

from voicemesh.transcript.app import create_app
from voicemesh.transcript.settings import TranscriptSettings

__all__ = ["TranscriptSettings", "create_app"]
