"""voicemesh agent. Conversation engine: listens to a call and talks back."""

from voicemesh.agent.app import AgentService, create_app
from voicemesh.agent.settings import AgentSettings

__all__ = ["AgentService", "AgentSettings", "create_app"]
