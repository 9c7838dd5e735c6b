"""voicemesh openaisim: a local OpenAI-compatible server.

Chat completions with tool calls (plain and streamed), transcription (pocketsphinx),
speech (eSpeak NG) and the Realtime WebSocket, for tests and offline development.
"""

from voicemesh.openaisim.app import create_app

__all__ = ["create_app"]
