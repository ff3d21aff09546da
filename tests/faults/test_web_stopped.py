"""SIGTERM to a web process (systemd's stop, a deploy): it takes no new connections, lets the
events it is handling finish, then exits 0.

A send caught in the middle must still be answered: the message is committed, and a client that
never got the ack would send it again. The send is held on a table lock taken by the test
(PostgreSQL shows the web process waiting in ``pg_stat_activity``), the process is told to stop,
and the lock is released.
"""

from __future__ import annotations

import signal
import socket
import time

import psycopg

from tests.faults.conftest import message_ids, process_report
from tests.harness.waiting import wait_until

STOP_GRACE = 5.0  # wsgi.py


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_a_stopping_web_process_answers_the_events_it_is_handling(make_stack, reliability):
    stack = make_stack("postgresql", workers={})
    alice, bob = stack.user("alice"), stack.user("bob")
    topic = stack.topic(alice, bob)
    alice_c = stack.client(alice)
    port = int(stack.url.rsplit(":", 1)[1])
    dsn = stack.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    acks: list[dict] = []
    with psycopg.connect(dsn) as lock:
        lock.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
        alice_c.sio.emit("send_message", topic.ref(message="in flight"), callback=acks.append)

        def send_waits() -> bool:
            with psycopg.connect(dsn, autocommit=True) as probe:
                row = probe.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO messages%%'"
                ).fetchone()
            return bool(row and row[0])

        wait_until(send_waits, timeout=15, message="the send never reached the database")
        stopped_at = time.monotonic()
        stack.web.send_signal(signal.SIGTERM)
        # Draining: no new connections, the held send still running.
        wait_until(lambda: _refuses_connections(port), timeout=5, message="still accepting")
        assert stack.web.alive and not acks
        lock.rollback()  # the send goes on

    wait_until(lambda: acks, timeout=10, message="the send in flight was never answered")
    assert acks[0]["ok"], acks
    assert stack.web.wait(timeout=STOP_GRACE + 5) == 0
    took = time.monotonic() - stopped_at
    assert took < STOP_GRACE + 5, took
    assert message_ids(stack, topic) == [acks[0]["message"]["id"]]
    assert "stopping: no new connections, " in stack.web.log_text()
    assert not process_report(stack)["web"]

    reliability.record(
        "faults",
        "web process stopped (SIGTERM) while it handles a send",
        expected="no new connections; the send in flight is answered and stored; exit 0 within "
        f"{STOP_GRACE:.0f} s of grace",
        observed=f"new connections refused at once; the send was answered ok and stored; "
        f"exit 0 {took:.1f} s after SIGTERM",
        backend=stack.backend,
    )
