"""Coalescing: a busy topic gives an offline user one push per window, with the count.

The first message to a user in a topic goes out at once and opens a window
(``PUSH_COALESCE_WINDOW``). Messages during the window are held; when it ends, one push says
how many arrived (and opens the next window, so a steady stream gives one push per window).
The first @mention of a window is not held. Every push of a topic carries the same Web Push
``Topic`` header and the same notification tag, so each one replaces the last on the device.

State is one Redis hash per (user, topic), changed only by the Lua scripts below, plus a
sorted set of the messages already offered, so that a redelivered fan-out neither counts a
message twice nor loses the decision it got the first time.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import redis

from webapp.platform import context
from webapp.redis_client import get_redis

log = logging.getLogger(__name__)

# How long state outlives its window: room for a flush task that runs late.
SLACK_MS = 600_000

# For each member i: KEYS[2i-1] its state hash, KEYS[2i] its offered zset, ARGV[4+i] whether
# the message mentions it (0/1). ARGV[1..4]: message id, now (ms), window (ms), slack (ms).
# Returns {decision, count, delay_ms} per member, flattened; decision is send, hold or
# schedule (hold, and the caller must enqueue the flush in delay_ms).
_OFFER = """
local message, now, window, slack = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 1, #KEYS / 2 do
  local state, offered, mentioned = KEYS[2 * i - 1], KEYS[2 * i], ARGV[4 + i]
  local previous = redis.call('ZSCORE', offered, message)
  if previous then
    local sent = tonumber(previous) % 2 == 1
    local total = tonumber(redis.call('HGET', state, 'total') or '1')
    table.insert(out, sent and 'send' or 'hold'); table.insert(out, total); table.insert(out, 0)
  else
    local s = redis.call('HMGET', state,
                         'until', 'total', 'pending', 'flush', 'mention_sent', 'last')
    local window_end = tonumber(s[1] or '0')
    local total, pending = tonumber(s[2] or '0'), tonumber(s[3] or '0')
    local decision, delay = 'hold', 0
    if window_end <= now then
      -- No open window: this message goes now, for itself and anything a late flush holds.
      total = (pending > 0) and (total + 1) or 1
      redis.call('HSET', state, 'until', now + window, 'total', total, 'pending', 0,
                 'flush', 0, 'mention', 0, 'mention_sent', mentioned, 'last', message)
      decision = 'send'
    else
      -- Inside the window: one HSET with every field that changes.
      total = total + 1
      local fields = {'total', total}
      if tonumber(message) > tonumber(s[6] or '0') then
        table.insert(fields, 'last'); table.insert(fields, message)
      end
      if mentioned == '1' and s[5] ~= '1' then
        for _, v in ipairs({'pending', 0, 'mention', 0, 'mention_sent', 1}) do
          table.insert(fields, v)
        end
        decision = 'send'
      else
        table.insert(fields, 'pending'); table.insert(fields, pending + 1)
        if mentioned == '1' then table.insert(fields, 'mention'); table.insert(fields, 1) end
        if s[4] ~= '1' then
          table.insert(fields, 'flush'); table.insert(fields, 1)
          decision, delay = 'schedule', window_end - now
        end
      end
      redis.call('HSET', state, unpack(fields))
    end
    redis.call('ZADD', offered, now * 2 + ((decision == 'send') and 1 or 0), message)
    redis.call('ZREMRANGEBYSCORE', offered, '-inf', (now - window - slack) * 2)
    local ttl = math.max(window_end, now + window) - now + slack
    redis.call('PEXPIRE', state, ttl)
    redis.call('PEXPIRE', offered, ttl)
    table.insert(out, decision); table.insert(out, total); table.insert(out, delay)
  end
end
return out
"""

# Members per script call: a call holds Redis while it runs (~10 µs per member measured), so
# a big topic is split into calls of a few milliseconds, pipelined in one round trip.
OFFER_BATCH = 100

# KEYS: state hash, offered zset. ARGV: now (ms), window (ms), slack (ms).
# Returns {pending, total, last, mention}.
_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, 0, 0} end
local s = redis.call('HMGET', KEYS[1], 'pending', 'total', 'last', 'mention')
redis.call('HSET', KEYS[1], 'flush', 0)
local pending = tonumber(s[1] or '0')
if pending == 0 then return {0, tonumber(s[2] or '0'), 0, 0} end
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'pending', 0, 'mention', 0, 'mention_sent', 0, 'until', now + window)
redis.call('PEXPIRE', KEYS[1], window + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], window + tonumber(ARGV[3]))
return {pending, tonumber(s[2]), tonumber(s[3]), tonumber(s[4] or '0')}
"""


@dataclass(frozen=True)
class Offer:
    send: bool
    count: int
    flush_in: float | None = None  # seconds: enqueue the flush of this (user, topic)


@dataclass(frozen=True)
class Held:
    """What a window held back: ``count`` messages in the chain, the newest ``last_message_id``."""

    count: int
    last_message_id: int
    mentioned: bool


SEND_NOW = Offer(send=True, count=1)


def _keys(user_id: uuid.UUID | str, topic_id: uuid.UUID | str) -> list[str]:
    base = f"beacon:coalesce:{user_id}:{topic_id}"
    return [base, f"{base}:offered"]


def _window_ms() -> int:
    return int(context.settings().push_coalesce_window * 1000)


def offer(
    message_id: int,
    topic_id: uuid.UUID,
    members: list[tuple[uuid.UUID, bool]],
    now_ms: int,
) -> dict[uuid.UUID, Offer]:
    """Each ``(user, mentioned)`` member's decision for this message, in one round trip.

    Coalescing off, or Redis unavailable: everyone is sent to now (a push too many beats a
    push lost).
    """
    window = _window_ms()
    if window <= 0 or not members:
        return {user_id: SEND_NOW for user_id, _ in members}
    client = get_redis(context.settings().redis_url)
    try:
        script = client.register_script(_OFFER)
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(members), OFFER_BATCH):
            batch = members[start : start + OFFER_BATCH]
            script(
                keys=[key for user_id, _ in batch for key in _keys(user_id, topic_id)],
                args=[message_id, now_ms, window, SLACK_MS, *(int(m) for _, m in batch)],
                client=pipe,
            )
        replies = [value for reply in pipe.execute() for value in reply]
    except redis.RedisError:
        log.warning("push coalescing unavailable (Redis); sending every push", exc_info=True)
        return {user_id: SEND_NOW for user_id, _ in members}
    decisions = {}
    for i, (user_id, _) in enumerate(members):
        decision, count, delay = replies[3 * i : 3 * i + 3]
        decisions[user_id] = Offer(
            send=decision == "send",
            count=int(count),
            flush_in=int(delay) / 1000 if decision == "schedule" else None,
        )
    return decisions


def take(user_id: uuid.UUID | str, topic_id: uuid.UUID | str, now_ms: int) -> Held | None:
    """What the ending window held (and open the next one); None when it held nothing."""
    client = get_redis(context.settings().redis_url)
    pending, total, last, mention = client.eval(
        _TAKE, 2, *_keys(user_id, topic_id), now_ms, _window_ms(), SLACK_MS
    )
    if int(pending) == 0:
        return None
    return Held(count=int(total), last_message_id=int(last), mentioned=bool(int(mention)))


def reset(user_id: uuid.UUID | str, topic_id: uuid.UUID | str) -> None:
    """The user caught up (read the topic, or was online when the window ended): the next
    push starts a new count. Being online for a while during a window does not reset it:
    what is counted is still unread."""
    if _window_ms() <= 0:
        return
    try:
        get_redis(context.settings().redis_url).delete(*_keys(user_id, topic_id))
    except redis.RedisError:
        log.warning("could not reset push coalescing for user %s", user_id, exc_info=True)
