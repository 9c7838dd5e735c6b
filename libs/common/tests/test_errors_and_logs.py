"""The error tree's categories and the PHI-redacting log filter."""

from __future__ import annotations

import logging

import pytest

from voicemesh.common.contracts import errors
from voicemesh.common.runtime.logs import RedactingFilter


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (errors.UnavailableError("db down"), errors.Category.RETRY),
        (errors.DeadlineExceeded("slow"), errors.Category.RETRY),
        (errors.InvalidMessage("bad"), errors.Category.DEAD_LETTER),
        (errors.UnknownTenant("who"), errors.Category.DEAD_LETTER),
        (errors.Conflict("taken"), errors.Category.DEAD_LETTER),
        (RuntimeError("bug"), errors.Category.RETRY),
    ],
)
def test_categories(exc: BaseException, category: errors.Category) -> None:
    assert errors.category_of(exc) is category


def test_redacting_filter_masks_phone_email_and_dates() -> None:
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "call %s from %s born %s via nats://127.0.0.1:4222",
        ("+15551234567", "jo@example.com", "1980-02-03"),
        None,
    )
    RedactingFilter().filter(record)
    text = record.getMessage()
    assert "+15551234567" not in text and "jo@example.com" not in text and "1980" not in text
    assert "127.0.0.1:4222" in text
