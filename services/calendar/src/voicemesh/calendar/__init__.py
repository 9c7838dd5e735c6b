"""voicemesh calendar. Calendar tools: availability, bookings and reminders."""

from voicemesh.calendar.app import create_app
from voicemesh.calendar.settings import CalendarSettings

__all__ = ["CalendarSettings", "create_app"]
