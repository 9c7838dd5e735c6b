"""The tool contract: argument and result models (a module per domain), the catalogue and
the typed errors. The server and client that carry tool calls are ``runtime.tools``."""

from voicemesh.common.contracts.tools.base import *  # noqa: F403
from voicemesh.common.contracts.tools.calendar import *  # noqa: F403
from voicemesh.common.contracts.tools.catalogue import *  # noqa: F403
from voicemesh.common.contracts.tools.crm import *  # noqa: F403
from voicemesh.common.contracts.tools.errors import *  # noqa: F403
from voicemesh.common.contracts.tools.sms import *  # noqa: F403
