"""``python -m voicemesh.crm``: run the crm service until SIGTERM."""

from __future__ import annotations

from voicemesh.common import serve
from voicemesh.crm.app import create_app
from voicemesh.crm.settings import CrmSettings


def main() -> None:
    serve("crm", CrmSettings, create_app, freeze_heap=True)


if __name__ == "__main__":
    main()
