"""Rules that all workers on all hosts must share, kept in Redis.

- one capture of an instance at a time (a lock with a lease),
- no two API calls on one instance less than 10 s apart (a key that lives 10 s),
- a per-account call rate (a token bucket, one Lua script so it is atomic).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.conf import settings

_TOKEN_BUCKET = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local state = redis.call('HMGET', key, 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now_ms
tokens = math.min(burst, tokens + (now_ms - at) * rate / 1000)
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', key, 'tokens', tokens, 'at', now_ms)
redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
return wait_ms
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_connection: tuple[int, str, redis.Redis] | None = None


def connection() -> redis.Redis:
    global _connection
    if _connection is None or _connection[0] != os.getpid() or _connection[1] != settings.REDIS_URL:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        _connection = (os.getpid(), settings.REDIS_URL, client)
    return _connection[2]


def key(*parts: object) -> str:
    return settings.REDIS_KEY_PREFIX + ":".join(str(p) for p in parts)


@contextmanager
def instance_lock(instance_pk: int, lease_seconds: float) -> Iterator[bool]:
    """Yields True if this process holds the capture lock of the instance, False if another does.

    The lease outlives the task's hard time limit, so a killed worker's lock expires by itself.
    """
    name, token = key("capture-lock", instance_pk), uuid.uuid4().hex
    acquired = bool(connection().set(name, token, nx=True, px=int(lease_seconds * 1000)))
    try:
        yield acquired
    finally:
        if acquired:
            connection().eval(_RELEASE, 1, name, token)


# The gap is measured where the API measures it, at arrival; our clocks see the call leave and the
# reply come back. Holding the slot a little longer than the rule, and restarting it when the reply
# is in, keeps two calls at least the rule's gap apart on the server's side too.
CALL_SLOT_MARGIN = 0.5


def lock_remaining(instance_pk: int) -> float:
    return max(connection().pttl(key("capture-lock", instance_pk)), 0) / 1000


def claim_call_slot(instance_pk: int, min_gap_seconds: float) -> float:
    """Reserve the right to call the API on this instance now.

    Returns 0 when granted, otherwise the seconds until the slot frees up.
    """
    name = key("last-call", instance_pk)
    if connection().set(name, time.time(), nx=True, px=int((min_gap_seconds + CALL_SLOT_MARGIN) * 1000)):
        return 0.0
    remaining_ms = connection().pttl(name)
    return max(remaining_ms, 1) / 1000


def call_finished(instance_pk: int, min_gap_seconds: float) -> None:
    """Restart the gap from the reply: the server saw the call no later than this."""
    connection().set(key("last-call", instance_pk), time.time(),
                     px=int((min_gap_seconds + CALL_SLOT_MARGIN) * 1000))


def seconds_until_call_allowed(instance_pk: int) -> float:
    remaining_ms = connection().pttl(key("last-call", instance_pk))
    return max(remaining_ms, 0) / 1000


def take_account_token(account_pk: int, rate: float, burst: int) -> float:
    """Take one call from the account's bucket. Returns 0 when granted, else seconds to wait."""
    wait_ms = connection().eval(_TOKEN_BUCKET, 1, key("bucket", account_pk), rate, burst)
    return int(wait_ms) / 1000


def try_once(name: str, seconds: float) -> bool:
    """True for the first caller within ``seconds`` (e.g. one credentials probe per account)."""
    return bool(connection().set(key(name), 1, nx=True, px=int(seconds * 1000)))
