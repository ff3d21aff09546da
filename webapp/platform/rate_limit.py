"""Per-user (and per-address) rate limits, kept in Redis so every web process shares them.

GCRA (the "generic cell rate algorithm", a token bucket with one key per subject): a limit of
``N/period`` allows a burst of N, then one more every ``period/N`` seconds. One Lua call
decides atomically and returns how long to wait when refused, so the answer can carry a
precise ``retry_after``. Redis's own clock is used, so web processes with skewed clocks agree.
"""

from __future__ import annotations

import math

import redis

from config import RateLimit
from webapp.errors import RateLimited

PREFIX = "beacon:ratelimit"

# KEYS[1]: the subject's key. ARGV: emission interval (ms), burst tolerance (ms).
# Returns 0 when allowed, else the milliseconds to wait.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - tolerance
if allow_at > now then
  return allow_at - now
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(new_tat - now)))
return 0
"""

ACTIONS = {
    "send_message": "sending messages",
    "subscribe": "push subscriptions",
    "connect_user": "connection attempts",
    "connect_ip": "connection attempts from this address",
    "join_topic": "topic joins",
    "leave_topic": "topic leaves",
    "mark_as_read": "read receipts",
    "set_presence": "presence reports",
    "mark_as_unread": "marks as unread",
    "sync": "sync requests",
    "typing": "typing notices in this topic",
    "test_push": "test notifications",
    "admin": "integration API requests with this key",
}


class RateLimiter:
    """Rate limit checks over one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_GCRA)

    def wait_time(self, action: str, subject: str, limit: RateLimit) -> float:
        """Seconds to wait before ``subject`` may do ``action`` again; 0.0 means go (counted)."""
        interval_ms = limit.period * 1000.0 / limit.limit
        tolerance_ms = interval_ms * limit.limit
        waited = self._script(
            keys=[f"{PREFIX}:{action}:{subject}"], args=[interval_ms, tolerance_ms]
        )
        return int(waited) / 1000.0

    def check(self, action: str, subject: str, limit: RateLimit | None) -> None:
        """Count one ``action`` by ``subject``, or raise ``RateLimited`` with a retry hint."""
        if limit is None:
            return
        wait = self.wait_time(action, subject, limit)
        if wait > 0:
            retry_after = math.ceil(wait * 10) / 10  # tenths of a second, never 0
            raise RateLimited(
                "rate_limited",
                f"too many {ACTIONS.get(action, action)} (limit {limit}); "
                f"retry in {retry_after:g}s",
                retry_after=retry_after,
            )


_instances: dict[str, RateLimiter] = {}


def limiter_for(redis_url: str) -> RateLimiter:
    from webapp.redis_client import get_redis

    instance = _instances.get(redis_url)
    if instance is None:
        instance = RateLimiter(get_redis(redis_url))
        _instances[redis_url] = instance
    return instance


def check(action: str, subject: object, limit: RateLimit | None) -> None:
    """Rate-limit ``action`` for ``subject`` (a user id or an address) with the app's Redis."""
    if limit is None:
        return
    from webapp.platform import context

    limiter_for(context.settings().redis_url).check(action, str(subject), limit)
