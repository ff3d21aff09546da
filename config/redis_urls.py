"""Redis URLs through Sentinel: ``settings.redis_url`` names Redis one way for every process
(``redis://...``, or ``redis+sentinel://[user:password@]host:port,.../db/master`` with
``REDIS_SENTINELS``, python-socketio's form), and these read it back for the libraries.
Plain parsing, no client library: ``celeryconfig`` imports it before the workers' gevent
patching, when importing redis (and with it ssl) would break TLS in the workers.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

# How long to wait for one sentinel to answer before asking the next.
SENTINEL_TIMEOUT = 1.0


def redis_url_from(env: dict[str, str], default: str) -> str:
    """``REDIS_URL``; with ``REDIS_SENTINELS`` the same database through Sentinel, as one
    ``redis+sentinel://[user:password@]host:port,.../db/master`` URL (python-socketio's form),
    so every process reaches Redis through ``settings.redis_url`` either way. REDIS_URL then gives
    only the database number and the password of the data nodes; its host is not used."""
    url = env.get("REDIS_URL") or default
    raw = (env.get("REDIS_SENTINELS") or "").strip()
    master = (env.get("REDIS_SENTINEL_MASTER") or "").strip()
    if not raw:
        if master:
            raise ValueError("REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not")
        return url
    if not master or not all(c.isalnum() or c in "-_." for c in master):
        raise ValueError(
            "REDIS_SENTINELS needs REDIS_SENTINEL_MASTER, the name Sentinel monitors "
            f"(letters, digits, '-', '_', '.'); got {master!r}"
        )
    nodes = []
    for item in raw.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"REDIS_SENTINELS must be host:port,host:port,...; got {item!r}")
        nodes.append(f"{host}:{int(port)}")
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(
            "with REDIS_SENTINELS, REDIS_URL must be redis://[:password@]host/db (its database "
            f"and password are used; TLS to Redis is not supported with Sentinel); got {url!r}"
        )
    db = (parts.path or "/").strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"REDIS_URL's database must be a number; got {db!r}")
    auth = parts.netloc.rpartition("@")[0]
    return f"redis+sentinel://{auth + '@' if auth else ''}{','.join(nodes)}/{db}/{master}"


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
