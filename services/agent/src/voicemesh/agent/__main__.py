"""``python -m voicemesh.agent``: run the agent service until SIGTERM."""

from __future__ import annotations

from voicemesh.agent.app import create_app
from voicemesh.agent.settings import AgentSettings
from voicemesh.common import run, setup_process


def main() -> None:
    settings = AgentSettings()
    setup_process("agent", settings)
    run(create_app(settings))


if __name__ == "__main__":
    main()
