"""``python -m voicemesh.calendar``: run the calendar service until SIGTERM."""

from __future__ import annotations

from voicemesh.calendar.app import create_app
from voicemesh.calendar.settings import CalendarSettings
from voicemesh.common import serve


def main() -> None:
    serve("calendar", CalendarSettings, create_app, freeze_heap=True)


if __name__ == "__main__":
    main()
