"""Presence under connect/disconnect storms: exact counts, one status change per real change.

A private Beacon (``bench/stack.py``) and U users (default 1,000), each driven by one
python-socketio client (``bench/load.py``'s client processes), plus an observer connection of
another user that records every ``user_status_change``. Four storms, each with every user at
once (``--conc`` handshakes in flight per client process):

1. connect:    all U connect            -> exactly one ``online`` per user;
2. reconnect:  all U drop and reconnect -> per user either nothing (the new connection
               overtook the old one's disconnect: no real change) or exactly
               ``offline, online``; never a lone or doubled event; ends online;
3. tab swap:   all U open a second connection, then close the first -> no event at all;
4. disconnect: all U disconnect         -> exactly one ``offline`` per user.

After each storm, presence must be exact: Redis's online set is precisely the connected users,
and ``users.is_online`` in the database agrees. Reported per storm: the time until the storm's
clients finished and until Redis, the database and the observer all agreed (settle), events
seen against events expected, and any user whose sequence is wrong.

Every status change goes to every connected client, so a storm of U users sends about U^2/2
frames; the settle time grows with that, not with U.

    .venv/bin/python bench/presence_churn.py [--users 1000] [--procs 2] [--conc 100]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import ClientPool, ClientSpec  # noqa: E402
from bench.stack import beacon_stack, create_topics, create_users  # noqa: E402


def _online_in_db(app: Any, user_ids: list[str]) -> int:
    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.models import User

    with app.app_context():
        count = db.session.execute(
            select(func.count()).where(
                User.id.in_([uuid.UUID(u) for u in user_ids]), User.is_online.is_(True)
            )
        ).scalar_one()
        db.session.rollback()
        return count


def _sequences(observer: Any, after: int, ids: set[str]) -> dict[str, list[bool]]:
    seqs: dict[str, list[bool]] = collections.defaultdict(list)
    for payload in observer.events("user_status_change", after=after):
        if payload["user_id"] in ids:
            seqs[payload["user_id"]].append(payload["is_online"])
    return seqs


def storm(
    name: str,
    pool: ClientPool,
    cmd: str,
    args: argparse.Namespace,
    stack: Any,
    observer: Any,
    ids: list[str],
    online_after: bool,
    allowed: list[list[bool]],
    expected_events: int | None,
) -> dict:
    """Run one storm, wait (bounded) until everything agrees, and judge the event sequences."""
    from webapp.presence.store import ONLINE

    redis = stack.redis_client()
    idset = set(ids)
    mark = observer.mark()
    t0 = time.monotonic()
    results = pool.call(cmd, timeout=args.timeout, concurrency=args.conc)
    t_clients = time.monotonic() - t0
    errors = {k: v for r in results for k, v in r["errors"].items()}
    target = idset if online_after else set()

    def agreed() -> bool:
        online = set(redis.smembers(ONLINE)) & idset
        if online != target:
            return False
        if _online_in_db(stack.app, ids) != len(target):
            return False
        if expected_events is not None:
            seen = sum(len(s) for s in _sequences(observer, mark, idset).values())
            return seen >= expected_events
        return True

    deadline = time.monotonic() + args.timeout
    ok = agreed()
    while not ok and time.monotonic() < deadline:
        time.sleep(0.2)
        ok = agreed()
    settle = time.monotonic() - t0
    # Events that should not come would come before a later one: give stragglers a moment.
    time.sleep(1.0)
    seqs = _sequences(observer, mark, idset)
    wrong = {u: s for u, s in seqs.items() if s not in allowed}
    silent = len(idset) - len(seqs)
    if [] not in allowed and silent:
        wrong.update({u: [] for u in idset - set(seqs)})
    online = set(redis.smembers(ONLINE)) & idset
    return {
        "storm": name,
        "clients_s": t_clients,
        "settle_s": settle,
        "agreed": ok,
        "events": sum(len(s) for s in seqs.values()),
        "expected": expected_events,
        "silent_users": silent,
        "wrong": wrong,
        "redis_online": len(online),
        "db_online": _online_in_db(stack.app, ids),
        "target_online": len(target),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="presence under connect/disconnect storms")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--conc", type=int, default=100, help="handshakes in flight per process")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound per storm")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--client", default="lean", choices=["lean", "stock"])
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)

    from tests.harness.sio_client import RecordingClient

    with beacon_stack(args.backend, keep_logs=args.keep_logs) as stack:
        if args.keep_logs:
            print(f"logs: {stack.log_dir}")
        users = create_users(stack.app, args.users + 1, prefix="churn")
        watcher, users = users[0], users[1:]
        (topic,) = create_topics(stack.app, [list(range(len(users)))], users)
        specs = [ClientSpec(u.id, u.token, topic.topic_id, topic.room_id) for u in users]
        ids = [u.id for u in users]
        observer = RecordingClient(name="observer")
        observer.connect(stack.url, watcher.token, transports=["websocket"])
        pool = ClientPool(stack.url, specs, args.procs, args.client == "lean")
        rows = []
        try:
            u = len(users)
            plan = [
                ("connect", "connect_all", True, [[True]], u),
                ("reconnect", "reconnect_all", True, [[], [False, True]], None),
                ("tab swap", "swap_all", True, [[]], None),
                ("disconnect", "disconnect_all", False, [[False]], u),
            ]
            print(
                f"{u} users, {args.procs} client processes, {args.conc} handshakes in flight "
                f"per process, {args.backend}",
                flush=True,
            )
            print(
                f"{'storm':<11} {'clients s':>9} {'settle s':>9} {'events':>7} {'expected':>9} "
                f"{'no-event':>8} {'wrong':>6} {'redis on':>8} {'db on':>6} {'exact':>6}"
            )
            for name, cmd, online_after, allowed, expected in plan:
                r = storm(
                    name, pool, cmd, args, stack, observer, ids, online_after, allowed, expected
                )
                rows.append(r)
                exact = r["agreed"] and r["redis_online"] == r["db_online"] == r["target_online"]
                expected_text = "-" if expected is None else str(expected)
                if name == "reconnect":
                    expected_text = f"0..{2 * u}"
                elif name == "tab swap":
                    expected_text = "0"
                print(
                    f"{name:<11} {r['clients_s']:>9.1f} {r['settle_s']:>9.1f} {r['events']:>7} "
                    f"{expected_text:>9} {r['silent_users']:>8} {len(r['wrong']):>6} "
                    f"{r['redis_online']:>8} {r['db_online']:>6} {'yes' if exact else 'NO':>6}",
                    flush=True,
                )
                if r["errors"]:
                    print(f"  ! client errors: {r['errors']}")
                for user_id, seq in list(r["wrong"].items())[:5]:
                    print(f"  ! user {user_id}: events {seq}")
        finally:
            pool.close()
            observer.disconnect()
    bad = [r for r in rows if r["wrong"] or not r["agreed"] or r["errors"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
