"""``processed_events`` markers are pruned by age, and exactly-once still holds afterwards.

The real worker runs ``beacon.unread.prune_markers`` (beat runs it hourly) over markers older
than ``PROCESSED_EVENTS_DAYS`` (more than one batch of them) and younger ones. Only the old ones
go; the markers of recent messages stay, so a redelivered increment still counts once.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from sqlalchemy import func, insert, select

from tests.harness.waiting import wait_until

STALE = 12_000  # more than two batches of 5000
RETENTION_DAYS = 0.01  # 864 s; the fault stack's minimum is 628 s (RECONCILE_WINDOW 600 + ...)


def _count(stack, prefix: str) -> int:
    from webapp.extensions import db
    from webapp.models import ProcessedEvent

    with stack.app.app_context():
        try:
            return db.session.execute(
                select(func.count())
                .select_from(ProcessedEvent)
                .where(ProcessedEvent.key.like(prefix + "%"))
            ).scalar_one()
        finally:
            db.session.remove()


def _add_markers(stack, prefix: str, n: int, age: timedelta) -> None:
    from webapp.extensions import db
    from webapp.models import ProcessedEvent

    created = datetime.now(UTC) - age
    with stack.app.app_context():
        try:
            db.session.execute(
                insert(ProcessedEvent),
                [{"key": f"{prefix}{i}", "created_at": created} for i in range(n)],
            )
            db.session.commit()
        finally:
            db.session.remove()


def test_old_markers_are_pruned_recent_ones_kept_and_redelivery_counts_once(
    make_stack, backend, reliability
):
    from config import load_settings

    stack = make_stack(
        backend, workers={"unread": ("unread",)}, PROCESSED_EVENTS_DAYS=str(RETENTION_DAYS)
    )
    settings = load_settings(stack.env)
    retention = settings.processed_events_retention
    assert retention == RETENTION_DAYS * 86400 > settings.processed_events_minimum
    with pytest.raises(ValueError, match="PROCESSED_EVENTS_DAYS"):
        too_short = settings.processed_events_minimum / 86400 * 0.9
        load_settings({**stack.env, "PROCESSED_EVENTS_DAYS": str(too_short)})

    alice, bob = stack.user("alice"), stack.user("bob")
    topic = stack.topic(alice, bob)
    alice_c, bob_c = stack.client(alice), stack.client(bob)
    sent = []
    for i in range(3):
        ack = alice_c.call("send_message", topic.ref(message=f"kept {i}"))
        assert ack["ok"], ack
        sent.append(ack["message"]["id"])
    wait_until(lambda: stack.unread(bob, topic) == 3, message="increments not applied")
    tag = uuid.uuid4().hex[:8]
    _add_markers(stack, f"stale-{tag}:", STALE, timedelta(seconds=retention + 60))
    _add_markers(stack, f"young-{tag}:", 5, timedelta(seconds=retention - 60))
    assert _count(stack, f"stale-{tag}:") == STALE

    worker = stack.workers["unread"]
    offset = worker.log_size()
    producer = Celery("test-producer", broker=stack.env["REDIS_URL"])
    producer.send_task("beacon.unread.prune_markers", queue="unread")
    log = wait_until(
        lambda: re.search(
            r"beacon\.unread\.prune_markers\[[0-9a-f-]+\] succeeded in [0-9.]+s: (\d+)",
            worker.log_text(offset),
        ),
        timeout=60,
        message="the prune task did not finish",
    )
    pruned = int(log.group(1))
    assert _count(stack, f"stale-{tag}:") == 0
    assert pruned == STALE  # nothing else in this fresh database is that old
    assert _count(stack, f"young-{tag}:") == 5
    assert all(_count(stack, f"unread:{m}") == 1 for m in sent)

    # Redelivered (as after a worker died): the kept markers still make it count once.
    mark = bob_c.mark()
    for message_id in sent:
        producer.send_task("beacon.unread.increment", args=[message_id, [alice.id]], queue="unread")
    wait_until(
        lambda: len(bob_c.events("unread_update", after=mark)) >= len(sent),
        message="the redelivered increments did not run",
    )
    assert [p["unread_count"] for p in bob_c.events("unread_update", after=mark)] == [3, 3, 3]
    assert stack.unread(bob, topic) == 3

    reliability.record(
        "faults",
        "processed_events pruned by age (beacon.unread.prune_markers), then tasks redelivered",
        expected="markers older than PROCESSED_EVENTS_DAYS deleted in batches of 5000, younger "
        "ones kept; a value below the derived minimum refused; redelivered increments count "
        "once",
        observed=f"{pruned} of {STALE} old markers deleted by the real worker, 5 younger and the "
        f"messages' markers kept; PROCESSED_EVENTS_DAYS {too_short:.4f} refused (minimum "
        f"{settings.processed_events_minimum:g} s); {len(sent)} redelivered increments: "
        "count 3 unchanged",
        count=1,
    )
