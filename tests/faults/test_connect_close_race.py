"""A connection closed while its connect handler runs must not leave its user online (issue
14, suspicion 3).

python-socketio ignores an Engine.IO disconnect of a socket whose connect handler has not
returned yet (``is_connected`` is False while it is pending), and then marks the socket
connected when the handler returns: no disconnect event ever comes for it, and the handler
has already counted the connection in Redis. With long-polling a client does exactly that
when it posts the Socket.IO connect packet and then, at once, an Engine.IO close.

Here raw long-polling sessions do so many times (the close on a second HTTP connection, sent
before the connect request is answered: the handler runs inside that request), and the users
must end offline within the documented bound (the heartbeat TTL plus a sweep; a clean disconnect is
immediate): in Redis, in ``users.is_online`` and in ``GET /api/users/online``.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections import Counter

import redis
import requests
from sqlalchemy import func, select

from tests.harness.waiting import wait_until
from webapp.presence.store import ONLINE, PREFIX

USERS = 20
ROUNDS = 5  # per user: under the default per-user connect limit (30 a minute)
# PRESENCE_HEARTBEAT_TTL (3 s) + PRESENCE_SWEEP_INTERVAL (1 s) in the test stack, with slack.
BOUND = 10.0


def _open(url: str) -> str:
    opening = requests.get(f"{url}/socket.io/?EIO=4&transport=polling", timeout=10)
    assert opening.status_code == 200 and opening.text.startswith("0{"), opening.text
    return json.loads(opening.text[1:])["sid"]


def connect_then_close(url: str, token: str) -> str:
    """Post the connect packet and, on a second HTTP connection before its answer came, an
    Engine.IO close; the status of the two answers."""
    sid = _open(url)
    host = url.split("://", 1)[1]
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    headers = {"Content-Type": "text/plain;charset=UTF-8"}
    connect = http.client.HTTPConnection(host, timeout=10)
    close = http.client.HTTPConnection(host, timeout=10)
    try:
        connect.request("POST", path, body="40" + json.dumps({"token": token}), headers=headers)
        close.request("POST", path, body="1", headers=headers)  # while the handler runs
        closed = close.getresponse()
        closed.read()
        connected = connect.getresponse()
        connected.read()
        return f"connect {connected.status}, close {closed.status}"
    finally:
        connect.close()
        close.close()


def _online_in_redis(client: redis.Redis, ids: list[str]) -> set[str]:
    online = {i for i, flag in zip(ids, client.smismember(ONLINE, ids), strict=True) if flag}
    return online | {i for i in ids if client.hlen(f"{PREFIX}:conns:{i}")}


def _online_in_db(beacon, ids: list[str]) -> int:
    from webapp.extensions import db
    from webapp.models import User

    with beacon.app.app_context():
        count = db.session.execute(
            select(func.count()).where(
                User.id.in_([uuid.UUID(i) for i in ids]), User.is_online.is_(True)
            )
        ).scalar_one()
        db.session.remove()
        return count


def test_close_during_connect_leaves_no_one_online(beacon, reliability):
    users = [beacon.user("closer") for _ in range(USERS)]
    ids = [u.id for u in users]
    answers: Counter[str] = Counter()
    errors: list[BaseException] = []

    def run(user) -> None:  # noqa: ANN001
        try:
            for _ in range(ROUNDS):
                answers[connect_then_close(beacon.url, user.token)] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors

    store = redis.Redis.from_url(beacon.env["REDIS_URL"], decode_responses=True)
    observer = users[0]

    def settled() -> bool:
        listed = {
            u["user_id"] for u in beacon.api(observer, "GET", "/api/users/online").json()["users"]
        }
        return (
            not _online_in_redis(store, ids)
            and _online_in_db(beacon, ids) == 0
            and not (listed & set(ids))
        )

    try:
        wait_until(settled, timeout=BOUND, message="users stayed online")
        outcome = "every user offline (Redis, users table, /api/users/online)"
    except TimeoutError:
        outcome = (
            f"{len(_online_in_redis(store, ids))} of {USERS} users still online in Redis, "
            f"{_online_in_db(beacon, ids)} in the users table, {BOUND:.0f} s later"
        )
    reliability.record(
        "faults",
        "long-polling connect packet then an Engine.IO close while the connect handler runs",
        expected=f"the user offline within {BOUND:.0f} s (heartbeat TTL + sweep)",
        observed=outcome,
        count=USERS * ROUNDS,
    )
    assert outcome.startswith("every user offline"), outcome
