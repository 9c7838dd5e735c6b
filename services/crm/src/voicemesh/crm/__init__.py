"""voicemesh crm. CRM tools: contacts, notes, interactions and listings."""

from voicemesh.crm.app import create_app
from voicemesh.crm.settings import CrmSettings

__all__ = ["CrmSettings", "create_app"]
