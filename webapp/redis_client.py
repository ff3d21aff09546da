"""The one Redis client factory: every process shares a pooled client per URL.

``settings.redis_url`` is ``redis://...`` or, with ``REDIS_SENTINELS``, a
``redis+sentinel://[user:password@]host:port,.../db/master`` URL (config/settings.py). This
module is where that URL becomes each library's configuration: redis-py's Sentinel-managed
pool for the app's own clients, kombu's ``sentinel://`` transport for Celery, and python-socketio
reads the URL itself (``MESSAGE_QUEUE_OPTIONS``). A Sentinel-managed connection asks the
sentinels where the primary is whenever it connects, so after a failover every client reaches
the new primary on its next connection; until then calls fail like an outage (``unavailable``).
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


# Connections per process. Under gevent every greenlet inside a Redis call holds one, and a
# connect storm has hundreds of handshakes in flight: past the ceiling a plain pool raises
# "Too many connections" (refusing the handshake as ``unavailable``); this pool makes the
# greenlet wait up to POOL_TIMEOUT seconds for a free connection instead.
MAX_CONNECTIONS = 100
POOL_TIMEOUT = 5
# The Socket.IO message queue's connections (python-socketio's ``redis_options``): its listener
# blocks on a read with no timeout, so only connecting is bounded; keepalive finds a dead peer.
MESSAGE_QUEUE_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_keepalive": True}
# How long to wait for one sentinel to answer before asking the next.
SENTINEL_TIMEOUT = 1.0


class SentinelTarget(NamedTuple):
    """What a ``redis+sentinel://`` URL names."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int
    username: str | None
    password: str | None


def sentinel_target(url: str) -> SentinelTarget | None:
    """The sentinels, master name, database and credentials of a ``redis+sentinel://`` URL;
    None for any other URL."""
    parts = urlsplit(url)
    if parts.scheme != "redis+sentinel":
        return None
    nodes = []
    for node in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = node.rpartition(":")
        nodes.append((host.strip("[]"), int(port)))
    db, _, master = parts.path.strip("/").partition("/")
    return SentinelTarget(
        nodes,
        master,
        int(db or 0),
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel-managed pool (finds the primary) with the blocking pool's wait for a
    free connection (``MAX_CONNECTIONS``), as the plain URL gets."""


def get_redis(url: str) -> redis.Redis:
    """A process-wide client for ``url`` (connection-pooled, strings decoded, with timeouts)."""
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = _connect(url)
    return client


def _connect(url: str) -> redis.Redis:
    options: dict[str, Any] = {
        "max_connections": MAX_CONNECTIONS,
        "timeout": POOL_TIMEOUT,
        "decode_responses": True,
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        "retry_on_timeout": True,
    }
    target = sentinel_target(url)
    if target is None:
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, **options))
    sentinel = Sentinel(
        target.sentinels,
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
        },
    )
    return sentinel.master_for(
        target.master,
        connection_pool_class=_BlockingSentinelPool,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """Celery's ``broker_url`` for ``url``, and the transport options it needs besides the
    common ones: kombu's ``sentinel://`` transport (one URL per sentinel, ``;``-separated,
    ``master_name``) for a Sentinel URL, the URL itself otherwise."""
    target = sentinel_target(url)
    if target is None:
        return url, {}
    auth = urlsplit(url).netloc.rpartition("@")[0]
    prefix = f"{auth}@" if auth else ""
    broker = ";".join(
        f"sentinel://{prefix}{host}:{port}/{target.db}" for host, port in target.sentinels
    )
    return broker, {
        "master_name": target.master,
        "sentinel_kwargs": {
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
        },
    }
