"""GetInstanceConsoleOutput made readable: base64 text decoded, its time given a zone."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from django.core.cache import cache

from screenshots import ecs
from screenshots.models import Instance

# The API reports LastUpdateTime as "yyyy-MM-dd HH:mm:ss" in China Standard Time, without saying so.
API_TIMEZONE = timezone(timedelta(hours=8), "UTC+8")
CACHE_SECONDS = 30
MAX_CHARS = 256 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class ConsoleText:
    text: str
    updated_at: datetime | None  # aware, UTC
    request_id: str


def parse_update_time(value: str) -> datetime | None:
    try:
        local = datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return local.replace(tzinfo=API_TIMEZONE).astimezone(UTC)


def decode_output(encoded: str) -> str:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("The console output is not valid base64.") from None
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    # Escape sequences and control characters would only show as garbage in a <pre>.
    text = _CONTROL.sub("", _ANSI.sub("", text))
    return text[-MAX_CHARS:]


def console_output(instance: Instance) -> ConsoleText | ecs.EcsError:
    key = f"console-output:{instance.pk}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    reply = ecs.get_console_output(instance.account, instance.region_id, instance.instance_id)
    if isinstance(reply, ecs.EcsError):
        return reply
    try:
        text = decode_output(reply.base64_text)
    except ValueError as exc:
        return ecs.EcsError(ecs.ErrorCategory.MALFORMED, "MalformedReply", str(exc), reply.request_id)
    result = ConsoleText(text, parse_update_time(reply.last_update_time), reply.request_id)
    cache.set(key, result, CACHE_SECONDS)
    return result
