"""Log hygiene that must load with the logging configuration, before any app (so: no model imports)."""

from __future__ import annotations

import logging
import re

# Share and display tokens travel in paths (/s/<token>/, /display/<token>/).
_TOKEN_IN_PATH = re.compile(r"/(s|display)/[A-Za-z0-9_-]{16,}")


def redact(text: str) -> str:
    return _TOKEN_IN_PATH.sub(lambda m: f"/{m.group(1)}/<token>", text)


class RedactTokens(logging.Filter):
    """Replaces share and display tokens in request paths with a marker, in every log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _TOKEN_IN_PATH.search(message):
            record.msg = redact(message)
            record.args = None
        return True
