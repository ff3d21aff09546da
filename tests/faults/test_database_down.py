"""PostgreSQL is stopped for a while (``pg_ctl stop -m fast``) and started again.

What must hold: every client action during the outage gets a clear answer (ack ``unavailable``,
REST 503 JSON, connection refused with ``unavailable``) and writes nothing; a task that meets
the outage retries with backoff and completes once the database is back; a user who left
during the outage ends offline with ``last_seen_at``; no process exits; work resumes.
"""

from __future__ import annotations

import signal
import uuid

from sqlalchemy import func, select

from tests.faults.conftest import process_report
from tests.harness.processes import wait_log_contains
from tests.harness.waiting import wait_until


def _count(stack, model, *where) -> int:
    from webapp.extensions import db

    with stack.app.app_context():
        try:
            return db.session.execute(
                select(func.count()).select_from(model).where(*where)
            ).scalar_one()
        finally:
            db.session.remove()


def test_database_outage_answers_clearly_writes_nothing_and_resumes(
    make_stack, fault_postgres, reliability
):
    from webapp.models import Message, ProcessedEvent, PushSubscription, User

    stack = make_stack("postgresql")
    alice, bob, carol = stack.user("alice"), stack.user("bob"), stack.user("carol")
    topic = stack.topic(alice, bob)
    alice_c, bob_c = stack.client(alice), stack.client(bob)
    acked = []
    first = alice_c.call("send_message", topic.ref(message="before"))
    assert first["ok"], first
    acked.append(first["message"]["id"])
    wait_until(lambda: stack.unread(bob, topic) == 1, message="first increment missing")

    # A message whose unread task will meet the outage: the worker is frozen until then.
    unread_worker = stack.workers["unread"]
    unread_worker.send_signal(signal.SIGSTOP)
    queued = alice_c.call("send_message", topic.ref(message="queued"))
    assert queued["ok"], queued
    acked.append(queued["message"]["id"])
    with stack.app.app_context():  # nothing may hold a connection into the outage
        from webapp.extensions import db

        db.engine.dispose()

    fault_postgres.stop()
    answers: dict[str, str] = {}
    try:
        for event, payload in {
            "send_message": topic.ref(message="during the outage"),
            "mark_as_read": topic.ref(message_ids=acked),
            "join_topic": {"topic_id": topic.topic_id},
        }.items():
            ack = alice_c.call(event, payload, timeout=30)
            assert ack["ok"] is False and ack["error"] == "unavailable" and ack["message"], ack
            answers[event] = ack["error"]
        for method, path, body in (
            ("GET", "/api/topics", None),
            ("GET", f"/api/topics/{topic.topic_id}/messages", None),
            ("POST", "/api/notifications/subscribe", stack.push.new_subscription()),
        ):
            response = stack.api(alice, method, path, json=body)
            assert response.status_code in (401, 503), (path, response.status_code)
            assert response.json()["error"] == "unavailable", response.text
            answers[f"{method} {path.split('/')[2]}"] = f"{response.status_code} unavailable"
        ready = stack.api(None, "GET", "/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("error")
        ok, error = stack.new_client("carol").try_connect(stack.url, carol.token)
        assert not ok and error["data"]["error"] == "unavailable", error
        answers["connect"] = "refused unavailable"
        bob_c.disconnect()  # his status cannot be written now

        log = unread_worker.log_size()
        unread_worker.send_signal(signal.SIGCONT)
        wait_log_contains(unread_worker, "Retry in", since=log, timeout=20)  # backing off
    finally:
        fault_postgres.start()

    # Back: the task that met the outage completes, presence settles, work resumes.
    wait_until(lambda: stack.unread(bob, topic) == 2, timeout=30, message="queued increment lost")

    def bob_settled():
        from webapp.extensions import db

        with stack.app.app_context():
            row = db.session.get(User, uuid.UUID(bob.id))
            settled = row.is_online is False and row.last_seen_at is not None
            db.session.remove()
            return settled

    wait_until(bob_settled, timeout=15, message="bob's disconnect was never recorded")
    after = alice_c.call("send_message", topic.ref(message="after"), timeout=30)
    assert after["ok"], after
    acked.append(after["message"]["id"])
    wait_until(lambda: stack.unread(bob, topic) == 3, message="increment after the outage")
    assert stack.new_client("carol-again").try_connect(stack.url, carol.token)[0]

    # Nothing half-written: only the acknowledged messages exist, each counted once.
    topic_id = uuid.UUID(topic.topic_id)
    assert _count(stack, Message, Message.topic_id == topic_id) == len(acked)
    assert _count(stack, Message, Message.body == "during the outage") == 0
    assert _count(stack, PushSubscription, PushSubscription.user_id == uuid.UUID(alice.id)) == 0
    markers = [ProcessedEvent.key == f"unread:{m}" for m in acked]
    assert sum(_count(stack, ProcessedEvent, m) for m in markers) == len(acked)
    assert all(process_report(stack).values()), process_report(stack)

    reliability.record(
        "faults",
        "PostgreSQL stopped and restarted during traffic",
        expected="clear errors (ack `unavailable`, REST 503 JSON, connection refused "
        "`unavailable`), nothing half-written, tasks retry and complete, work resumes",
        observed="; ".join(f"{k}: {v}" for k, v in answers.items())
        + f"; queued increment applied after restart; counts exact; {len(acked)} messages, "
        "no other row; no process exited",
        backend=stack.backend,
    )
