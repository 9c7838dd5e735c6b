"""Log setup for service entry points (libraries only ever call ``logging.getLogger``)."""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["RedactingFilter", "configure_logging", "redact_phi"]

_PHONE = re.compile(r"(?<![\w.:])(?:\+\d{7,15}|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4})(?![\w.:])")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_DATE = re.compile(r"\b(?:\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{2,4})\b")


def redact_phi(text: str) -> str:
    """``text`` with phone numbers, e-mail addresses and dates masked."""
    return _DATE.sub("[date]", _EMAIL.sub("[email]", _PHONE.sub("[phone]", text)))


class RedactingFilter(logging.Filter):
    """Masks phone numbers, e-mail addresses and dates in every record.

    Installed for healthcare-class verticals as a last line of defence; code still must not
    log PHI in the first place.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_phi(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(service: str, level: str = "INFO", *, redact_phi: bool = False) -> None:
    """One line per record on stderr: time, level, service, logger, message."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
    )
    if redact_phi:
        handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosqlite (DEBUG) and SQLAlchemy (INFO) log statement parameters: caller data, maybe PHI.
    for quiet in ("aiosqlite", "sqlalchemy.engine"):
        logging.getLogger(quiet).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for noisy in ("uvicorn.access", "aioice", "aiortc", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
