"""Live connection bookkeeping in Redis: who is online, who is paying attention, and who is
looking at which topic.

A user is online while at least one connection (tab, device, on any web process) is live, and
``active`` while at least one of them is not idle (a connection is idle once its client said
so, or said nothing for PRESENCE_IDLE_AFTER: the web process decides that, ``attention``).
Counting happens in Lua scripts so that a status change (first connect, last disconnect, last
active connection going idle) is decided atomically, whatever the number of web processes.
Each web process refreshes a heartbeat key; connections of a process whose heartbeat expired
(it crashed, no disconnect fired) are removed by ``sweep_dead_processes``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from webapp.platform import context

log = logging.getLogger(__name__)

PREFIX = "beacon:presence"
ONLINE = f"{PREFIX}:online"
# Users with at least one connection that is not idle.
ACTIVE = f"{PREFIX}:active"
PROCESSES = f"{PREFIX}:procs"
IDLE_PREFIX = f"{PREFIX}:idle:"

# KEYS: user conns hash, online set, process conns set, user idle set, active set
# ARGV: user id, sid, process id, the user's connection cap (0: none).
# -1: refused, the user has that many connections already; 1: the user's status changed (a
# new connection is active: offline or idle -> active); 0: it did not.
_CONNECT = """
local cap = tonumber(ARGV[4] or '0')
if cap > 0 and redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0
    and redis.call('HLEN', KEYS[1]) >= cap then
  return -1
end
local added = redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1] .. ' ' .. ARGV[2])
if added == 0 then
  return 0
end
redis.call('SREM', KEYS[4], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('SADD', KEYS[5], ARGV[1])
"""

# KEYS: user conns hash, online set, process conns set, sid topics set, user idle set,
# active set; ARGV: user id, sid, topic key prefix. 1: the user's status changed (offline, or
# idle: their last active connection ended), 0: it did not.
_DISCONNECT = """
local removed = redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1] .. ' ' .. ARGV[2])
redis.call('SREM', KEYS[5], ARGV[2])
local topics = redis.call('SMEMBERS', KEYS[4])
for _, topic in ipairs(topics) do
  redis.call('HDEL', ARGV[3] .. topic, ARGV[2])
end
redis.call('DEL', KEYS[4])
if removed == 0 then
  return 0
end
local left = redis.call('HLEN', KEYS[1])
if left == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[5])
  redis.call('SREM', KEYS[6], ARGV[1])
  return 1
end
if left == redis.call('SCARD', KEYS[5]) then
  return redis.call('SREM', KEYS[6], ARGV[1])
end
return 0
"""

# KEYS: user conns hash, user idle set, active set; ARGV: user id, sid, "idle" or "active".
# -1: the connection is not registered (it closed meanwhile); 1: the user's status changed.
_SET_STATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then
  return -1
end
if ARGV[3] == 'idle' then
  if redis.call('SADD', KEYS[2], ARGV[2]) == 1
      and redis.call('SCARD', KEYS[2]) >= redis.call('HLEN', KEYS[1]) then
    return redis.call('SREM', KEYS[3], ARGV[1])
  end
  return 0
end
if redis.call('SREM', KEYS[2], ARGV[2]) == 1 then
  return redis.call('SADD', KEYS[3], ARGV[1])
end
return 0
"""

# KEYS: topic hash; ARGV: idle set key prefix. The users with a joined connection that is
# not idle.
_ACTIVE_IN_TOPIC = """
local found = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local sid, user = entries[i], entries[i + 1]
  if found[user] == nil and redis.call('SISMEMBER', ARGV[1] .. user, sid) == 0 then
    found[user] = true
  end
end
local users = {}
for user, _ in pairs(found) do
  users[#users + 1] = user
end
return users
"""

# KEYS: user conns hash, topic hash, sid topics set; ARGV: user id, sid, topic id
# Only for a connection that is still registered: a join whose handler was still running when
# its connection closed (after _DISCONNECT removed the sid's topics) must not mark the user
# active in the topic for good (tests/faults/test_join_disconnect_race.py).
_JOIN = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


def _conns_key(user_id: str) -> str:
    return f"{PREFIX}:conns:{user_id}"


def _proc_conns_key(proc_id: str) -> str:
    return f"{PREFIX}:proc:{proc_id}:conns"


def _proc_alive_key(proc_id: str) -> str:
    return f"{PREFIX}:proc:{proc_id}:alive"


def _idle_key(user_id: str) -> str:
    return f"{IDLE_PREFIX}{user_id}"


def _sid_topics_key(sid: str) -> str:
    return f"{PREFIX}:sid:{sid}:topics"


TOPIC_PREFIX = f"{PREFIX}:topic:"


def _topic_key(topic_id: str) -> str:
    return f"{TOPIC_PREFIX}{topic_id}"


class TooManyConnections(Exception):
    """The user has ``MAX_CONNECTIONS_PER_USER`` connections already."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"at most {cap} connections per user")
        self.cap = cap


@dataclass
class LiveConnection:
    user_id: str
    topics: set[str] = field(default_factory=set)
    idle: bool = False
    # time.monotonic() of the client's last sign of attention (connect, set_presence active,
    # a message, a read): idle once it is PRESENCE_IDLE_AFTER old.
    active_at: float = field(default_factory=time.monotonic)
    # The arrival number (sockets/acks.arrival) of the client's last set_presence: a sign of
    # attention from an event that arrived before it does not overrule it.
    said_at: int = 0


class LocalConnections:
    """A web process's own record of its live connections (sid -> user, joined topics).

    Redis is the shared truth, but it can lose its data (restart without persistence) or miss
    an update (a disconnect while Redis was down). The web process always knows who is
    connected to it, so it can rebuild its part of Redis from here (``Presence.rebuild``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[str, LiveConnection] = {}
        self._pending_offline: set[str] = set()
        self.needs_rebuild = False

    def add(self, sid: str, user_id: str) -> None:
        with self._lock:
            self._conns[sid] = LiveConnection(user_id)

    def remove(self, sid: str) -> str | None:
        with self._lock:
            conn = self._conns.pop(sid, None)
        return conn.user_id if conn else None

    def user_of(self, sid: str) -> str | None:
        with self._lock:
            conn = self._conns.get(sid)
        return conn.user_id if conn else None

    def join(self, sid: str, topic_id: str) -> None:
        with self._lock:
            conn = self._conns.get(sid)
            if conn is not None:
                conn.topics.add(topic_id)

    def leave(self, sid: str, topic_id: str) -> None:
        with self._lock:
            conn = self._conns.get(sid)
            if conn is not None:
                conn.topics.discard(topic_id)

    def attend(
        self, sid: str, *, idle: bool, arrived: int | None = None, said: bool = False
    ) -> bool | None:
        """Record the connection's attention; returns whether it was idle before (None: no
        such connection, or a report from an event that arrived before the client's last
        ``set_presence``, which stands). Active also restarts its idle timer.

        ``arrived`` orders the client's events: a process handles them concurrently, so a
        read sent just before "idle" can finish after it. ``said``: this is a set_presence."""
        with self._lock:
            conn = self._conns.get(sid)
            if conn is None:
                return None
            if arrived is not None:
                if arrived < conn.said_at:
                    return None
                if said:
                    conn.said_at = arrived
            was_idle, conn.idle = conn.idle, idle
            if not idle:
                conn.active_at = time.monotonic()
            return was_idle

    def gone_quiet(self, idle_after: float) -> list[tuple[str, str]]:
        """(sid, user id) of the active connections that said nothing for ``idle_after`` s."""
        cutoff = time.monotonic() - idle_after
        with self._lock:
            return [
                (sid, c.user_id)
                for sid, c in self._conns.items()
                if not c.idle and c.active_at <= cutoff
            ]

    def snapshot(self) -> dict[str, LiveConnection]:
        with self._lock:
            return {
                sid: LiveConnection(c.user_id, set(c.topics), c.idle, c.active_at)
                for sid, c in self._conns.items()
            }

    def __len__(self) -> int:
        return len(self._conns)

    def bookkeeping_failed(self, user_id: str | None = None) -> None:
        """A connect/disconnect could not be recorded: rebuild on the next heartbeat, and
        re-check ``user_id``'s status then."""
        with self._lock:
            self.needs_rebuild = True
            if user_id:
                self._pending_offline.add(user_id)

    def take_pending(self) -> set[str]:
        with self._lock:
            pending, self._pending_offline = self._pending_offline, set()
            self.needs_rebuild = False
            return pending


@dataclass
class Presence:
    """Presence operations over one Redis client."""

    redis: redis.Redis
    heartbeat_ttl: int = 30

    def __post_init__(self) -> None:
        self._connect = self.redis.register_script(_CONNECT)
        self._disconnect = self.redis.register_script(_DISCONNECT)
        self._join = self.redis.register_script(_JOIN)
        self._set_state = self.redis.register_script(_SET_STATE)
        self._active_in_topic = self.redis.register_script(_ACTIVE_IN_TOPIC)

    # processes -------------------------------------------------------------------------------
    def heartbeat(self, proc_id: str) -> bool:
        """Mark a web process alive for ``heartbeat_ttl`` seconds.

        Returns False when it was not marked alive before: Redis lost its data (a restart
        without persistence) or the sweep took this process for dead. Its connections must
        then be registered again (``rebuild``).
        """
        pipe = self.redis.pipeline()
        pipe.set(_proc_alive_key(proc_id), "1", ex=self.heartbeat_ttl, get=True)
        pipe.sadd(PROCESSES, proc_id)
        previous, _ = pipe.execute()
        return previous is not None

    def rebuild(self, proc_id: str, live: dict[str, LiveConnection]) -> tuple[list[str], list[str]]:
        """Make Redis agree with a web process's own list of its live connections.

        Connections Redis does not know are registered again (with the topics they joined
        and their idle state); connections Redis lists but the process no longer has are
        ended. Returns the user ids whose status changed because of it: (came online or
        active, went offline or idle). Idempotent, and safe against a concurrent connect or
        disconnect: each step is the same atomic script they use.
        """
        registered: dict[str, str] = {}
        for member in self.redis.smembers(_proc_conns_key(proc_id)):
            user_id, _, sid = member.partition(" ")
            registered[sid] = user_id
        came: list[str] = []
        for sid, conn in live.items():
            if sid not in registered and self.connect(conn.user_id, sid, proc_id):
                came.append(conn.user_id)
        pipe = self.redis.pipeline(transaction=False)
        for sid, conn in live.items():
            for topic_id in conn.topics:  # not for a connection that ended since the snapshot
                keys = [_conns_key(conn.user_id), _topic_key(topic_id), _sid_topics_key(sid)]
                self._join(keys=keys, args=[conn.user_id, sid, topic_id], client=pipe)
        pipe.execute()
        went = [
            conn.user_id
            for sid, conn in live.items()
            if conn.idle and self.set_state(conn.user_id, sid, idle=True)
        ]
        went.extend(
            user_id
            for sid, user_id in registered.items()
            if sid not in live and self.disconnect(user_id, sid, proc_id)
        )
        return came, went

    def sweep_dead_processes(self) -> list[str]:
        """End the connections of processes whose heartbeat expired.

        Returns the user ids whose status changed because of it (offline, or idle). Safe to
        run concurrently from several places: a connection is removed once.
        """
        changed: list[str] = []
        for proc_id in self.redis.smembers(PROCESSES):
            if self.redis.exists(_proc_alive_key(proc_id)):
                continue
            members = self.redis.smembers(_proc_conns_key(proc_id))
            for member in members:
                user_id, _, sid = member.partition(" ")
                if self.disconnect(user_id, sid, proc_id):
                    changed.append(user_id)
            if not self.redis.exists(_proc_alive_key(proc_id)):
                self.redis.srem(PROCESSES, proc_id)
            log.info("presence sweep: process %s gone, %d connections ended", proc_id, len(members))
        return changed

    # connections -----------------------------------------------------------------------------
    def connect(self, user_id: str, sid: str, proc_id: str, cap: int = 0) -> bool:
        """Record a live connection (active); True when the user's status changed (they came
        online, or were idle everywhere).

        With ``cap``, raise ``TooManyConnections`` (nothing recorded) when the user already
        has that many connections on all web processes: checked and added in one script.
        """
        keys = [_conns_key(user_id), ONLINE, _proc_conns_key(proc_id), _idle_key(user_id), ACTIVE]
        result = int(self._connect(keys=keys, args=[user_id, sid, proc_id, cap]))
        if result < 0:
            raise TooManyConnections(cap)
        return bool(result)

    def disconnect(self, user_id: str, sid: str, proc_id: str) -> bool:
        """Forget a connection; True when the user's status changed (it was their last, or
        their last active one)."""
        keys = [
            _conns_key(user_id),
            ONLINE,
            _proc_conns_key(proc_id),
            _sid_topics_key(sid),
            _idle_key(user_id),
            ACTIVE,
        ]
        return bool(self._disconnect(keys=keys, args=[user_id, sid, TOPIC_PREFIX]))

    def set_state(self, user_id: str, sid: str, *, idle: bool) -> bool:
        """Mark a live connection idle or active; True when the user's status changed
        (nothing happens for a connection that is not registered)."""
        keys = [_conns_key(user_id), _idle_key(user_id), ACTIVE]
        state = "idle" if idle else "active"
        return int(self._set_state(keys=keys, args=[user_id, sid, state])) == 1

    def status(self, user_id: str) -> str:
        """``active``, ``idle`` or ``offline``, from the live connections."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hlen(_conns_key(user_id))
        pipe.scard(_idle_key(user_id))
        connections, idle = pipe.execute()
        if not connections:
            return "offline"
        return "idle" if idle >= connections else "active"

    def sids_of(self, user_id: str) -> list[str]:
        """The user's live connections, on every web process."""
        return list(self.redis.hkeys(_conns_key(user_id)))

    # topics ----------------------------------------------------------------------------------
    def join_topic(self, user_id: str, sid: str, topic_id: str) -> bool:
        """Mark the connection active in the topic; False (nothing stored) when the
        connection is no longer registered (it closed meanwhile)."""
        keys = [_conns_key(user_id), _topic_key(topic_id), _sid_topics_key(sid)]
        return bool(self._join(keys=keys, args=[user_id, sid, topic_id]))

    def leave_topic(self, sid: str, topic_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hdel(_topic_key(topic_id), sid)
        pipe.srem(_sid_topics_key(sid), topic_id)
        pipe.execute()

    def forget_topic(self, topic_id: str) -> None:
        """A deleted topic: no connection is active in it any more."""
        key = _topic_key(topic_id)
        sids = self.redis.hkeys(key)
        pipe = self.redis.pipeline()
        for sid in sids:
            pipe.srem(_sid_topics_key(sid), topic_id)
        pipe.delete(key)
        pipe.execute()

    def joined(self, topic_id: str) -> dict[str, str]:
        """The connections joined to the topic, on every web process: sid -> user id."""
        return dict(self.redis.hgetall(_topic_key(topic_id)))

    def active_users(self, topic_id: str) -> set[str]:
        """Users looking at the topic: a live connection joined to it that is not idle."""
        return set(self._active_in_topic(keys=[_topic_key(topic_id)], args=[IDLE_PREFIX]))

    # queries ---------------------------------------------------------------------------------
    def online_user_ids(self) -> set[str]:
        return set(self.redis.smembers(ONLINE))

    def online_and_active_among(self, user_ids: list[str]) -> tuple[set[str], set[str]]:
        """The subsets of ``user_ids`` that are online and that are active (a connection
        that is not idle), in one round trip."""
        if not user_ids:
            return set(), set()
        pipe = self.redis.pipeline(transaction=False)
        pipe.smismember(ONLINE, user_ids)
        pipe.smismember(ACTIVE, user_ids)
        online, active = pipe.execute()
        return (
            {uid for uid, flag in zip(user_ids, online, strict=False) if flag},
            {uid for uid, flag in zip(user_ids, active, strict=False) if flag},
        )


_instances: dict[str, Presence] = {}


def presence_for(redis_url: str, heartbeat_ttl: int) -> Presence:
    """The process-wide ``Presence`` for a Redis URL (scripts registered once)."""
    from webapp.redis_client import get_redis

    instance = _instances.get(redis_url)
    if instance is None:
        instance = Presence(get_redis(redis_url), heartbeat_ttl)
        _instances[redis_url] = instance
    return instance


def presence() -> Presence:
    """The current app's ``Presence`` (its Redis, its heartbeat TTL)."""
    s = context.settings()
    return presence_for(s.redis_url, s.presence_heartbeat_ttl)
