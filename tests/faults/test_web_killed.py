"""SIGKILL a web process that holds connections: no disconnect event ever fires for them.

Its heartbeat key expires (PRESENCE_HEARTBEAT_TTL) and the sweep of a surviving web process
ends its connections (PRESENCE_SWEEP_INTERVAL): its users go offline, with ``last_seen_at``,
within TTL + sweep interval; users who also have a connection on the survivor stay online.
"""

from __future__ import annotations

import time
import uuid

import requests
from sqlalchemy import select

from tests.faults.conftest import process_report
from tests.harness.waiting import wait_until


def _user_row(stack, user):
    from webapp.extensions import db
    from webapp.models import User

    with stack.app.app_context():
        row = db.session.execute(select(User).where(User.id == uuid.UUID(user.id))).scalar_one()
        db.session.expunge(row)
        return row


def _online(url, viewer):
    headers = {"Authorization": f"Bearer {viewer.token}"}
    users = requests.get(f"{url}/api/users/online", headers=headers, timeout=10).json()["users"]
    return {u["user_id"] for u in users}


def test_users_of_a_killed_web_process_go_offline_within_the_bound(make_stack, reliability):
    stack = make_stack("sqlite", workers={})
    web2 = stack.start_web("web2")
    ttl = float(stack.env["PRESENCE_HEARTBEAT_TTL"])
    sweep = float(stack.env["PRESENCE_SWEEP_INTERVAL"])
    interval = float(stack.env["PRESENCE_HEARTBEAT_INTERVAL"])
    bound = ttl + sweep + interval  # expiry, then at most one sweep period (+ one beat)

    alice, bob, carol, observer_user = (stack.user(n) for n in ("alice", "bob", "carol", "obs"))
    observer = stack.new_client("observer@web2").connect(web2, observer_user.token)
    alice_tabs = [stack.client(alice, f"alice-tab{i}@web1") for i in (1, 2)]
    stack.new_client("bob@web2").connect(web2, bob.token)
    stack.client(carol, "carol@web1")
    stack.new_client("carol@web2").connect(web2, carol.token)
    everyone = {alice.id, bob.id, carol.id, observer_user.id}
    wait_until(lambda: everyone <= _online(web2, observer_user), message="not all online")
    assert all(tab.connected for tab in alice_tabs)

    mark = observer.mark()
    killed_at = time.monotonic()
    stack.web.kill()

    def alice_offline(p):
        return p["user_id"] == alice.id and not p["is_online"]

    event = observer.wait_for_event("user_status_change", alice_offline, bound + 5, after=mark)
    arrived = next(
        r.time
        for r in observer.received("user_status_change", after=mark)
        if alice_offline(r.payload)
    )
    elapsed = arrived - killed_at
    assert elapsed <= bound + 1.0, f"offline after {elapsed:.1f}s, bound {bound:.1f}s"
    assert event["last_seen_at"]

    row = _user_row(stack, alice)
    assert row.is_online is False and row.last_seen_at is not None

    # The dead process is forgotten only after its connections were ended; by then carol
    # (also on web2) must still be online and must never have been announced offline.
    from webapp.presence.store import PROCESSES
    from webapp.redis_client import get_redis

    redis = get_redis(stack.env["REDIS_URL"])
    wait_until(lambda: redis.scard(PROCESSES) == 1, message="the dead process was not swept")
    online = _online(web2, observer_user)
    assert {bob.id, carol.id, observer_user.id} <= online and alice.id not in online
    observer.assert_no_event(
        "user_status_change", lambda p: p["user_id"] in {bob.id, carol.id}, after=mark
    )
    assert _user_row(stack, carol).is_online is True
    assert process_report(stack) == {"web": False, "web2": True}

    reliability.record(
        "faults",
        "SIGKILL a web process holding connections (2 web processes)",
        expected=f"its users offline with last_seen_at within TTL + sweep ({bound:g} s); "
        "users also on the other web stay online",
        observed=f"offline after {elapsed:.1f} s with last_seen_at; "
        "the other web's users stayed online, no false offline event",
        backend=stack.backend,
    )
