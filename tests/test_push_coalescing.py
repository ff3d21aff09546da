"""The coalescing window's decisions, run by the real Lua scripts in a real Redis.

Time is an argument of the scripts, so these tests step a clock instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask

from tests.conftest import base_env
from webapp.delivery import coalescing as push_coalescing

WINDOW_MS = 30_000
T0 = 1_700_000_000_000


@pytest.fixture
def app(redis_server, tmp_path) -> Iterator[Flask]:
    from config import load_settings
    from webapp import create_app

    url = redis_server.new_db_url()
    env = base_env(f"sqlite:///{tmp_path}/unused.db", url, PUSH_COALESCE_WINDOW="30")
    app = create_app(load_settings(env), serve_sockets=False)
    with app.app_context():
        yield app


def _offer(message_id, user, topic, now, mentioned=False):
    return push_coalescing.offer(message_id, topic, [(user, mentioned)], now)[user]


def test_first_goes_now_the_rest_wait_for_one_push_with_the_count(app):
    user, topic = uuid.uuid4(), uuid.uuid4()
    first = _offer(1, user, topic, T0)
    assert first.send and first.count == 1 and first.flush_in is None
    second = _offer(2, user, topic, T0 + 1000)
    assert not second.send and second.flush_in == pytest.approx(29.0)
    for i in range(3, 21):  # 20 messages in 5 s
        held = _offer(i, user, topic, T0 + 1000 + i * 200)
        assert not held.send and held.flush_in is None, i  # one flush is enough
    flushed = push_coalescing.take(user, topic, T0 + WINDOW_MS)
    assert flushed == push_coalescing.Held(count=20, last_message_id=20, mentioned=False)
    assert push_coalescing.take(user, topic, T0 + WINDOW_MS + 1) is None


def test_steady_stream_gives_one_push_per_window(app):
    user, topic = uuid.uuid4(), uuid.uuid4()
    assert _offer(1, user, topic, T0).send
    assert _offer(2, user, topic, T0 + 10_000).flush_in == pytest.approx(20.0)
    assert push_coalescing.take(user, topic, T0 + WINDOW_MS).count == 2
    # The flush opened the next window: a message in it is held and schedules the next flush.
    nxt = _offer(3, user, topic, T0 + WINDOW_MS + 5_000)
    assert not nxt.send and nxt.flush_in == pytest.approx(25.0)
    assert push_coalescing.take(user, topic, T0 + 2 * WINDOW_MS).count == 3
    # A quiet window ends the chain: the next message goes at once and counts from 1.
    assert push_coalescing.take(user, topic, T0 + 3 * WINDOW_MS) is None
    later = _offer(4, user, topic, T0 + 4 * WINDOW_MS)
    assert later.send and later.count == 1


def test_message_after_a_window_whose_flush_is_late_carries_the_held_ones(app):
    user, topic = uuid.uuid4(), uuid.uuid4()
    _offer(1, user, topic, T0)
    _offer(2, user, topic, T0 + 1000)
    _offer(3, user, topic, T0 + 2000)
    # The flush task is late; a message arrives after the window ended.
    late = _offer(4, user, topic, T0 + WINDOW_MS + 100)
    assert late.send and late.count == 4
    assert push_coalescing.take(user, topic, T0 + WINDOW_MS + 200) is None


def test_first_mention_of_a_window_is_not_held(app):
    user, topic = uuid.uuid4(), uuid.uuid4()
    _offer(1, user, topic, T0)
    _offer(2, user, topic, T0 + 1000)
    mention = _offer(3, user, topic, T0 + 2000, mentioned=True)
    assert mention.send and mention.count == 3
    again = _offer(4, user, topic, T0 + 3000, mentioned=True)
    assert not again.send  # a second mention in the window waits like any message
    held = push_coalescing.take(user, topic, T0 + WINDOW_MS)
    assert held == push_coalescing.Held(count=4, last_message_id=4, mentioned=True)


def test_redelivered_offer_keeps_its_first_decision_and_count(app):
    user, topic = uuid.uuid4(), uuid.uuid4()
    assert _offer(1, user, topic, T0).send
    assert not _offer(2, user, topic, T0 + 1000).send
    # The same messages offered again (a fan-out redelivered after a crash).
    assert _offer(1, user, topic, T0 + 2000).send
    again = _offer(2, user, topic, T0 + 2000)
    assert not again.send and again.flush_in is None
    assert push_coalescing.take(user, topic, T0 + WINDOW_MS).count == 2


def test_users_and_topics_are_counted_apart(app):
    alice, bob, topic, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    decisions = push_coalescing.offer(1, topic, [(alice, False), (bob, True)], T0)
    assert decisions[alice].send and decisions[bob].send
    assert not _offer(2, alice, topic, T0 + 1000).send
    assert _offer(3, alice, other, T0 + 1000).send  # another topic: its own window
    assert push_coalescing.take(bob, topic, T0 + WINDOW_MS) is None


def test_reading_the_topic_restarts_the_count(app):
    user, topic = uuid.uuid4(), uuid.uuid4()
    _offer(1, user, topic, T0)
    _offer(2, user, topic, T0 + 1000)
    push_coalescing.reset(user, topic)
    assert push_coalescing.take(user, topic, T0 + WINDOW_MS) is None
    fresh = _offer(3, user, topic, T0 + 2000)
    assert fresh.send and fresh.count == 1


def test_coalescing_off_sends_everything(app):
    settings = app.extensions["beacon_settings"]
    app.extensions["beacon_settings"] = dataclasses.replace(settings, push_coalesce_window=0.0)
    user, topic = uuid.uuid4(), uuid.uuid4()
    assert all(_offer(i, user, topic, T0 + i).send for i in range(1, 5))


def test_redis_down_sends_everything(redis_server, tmp_path):
    from config import load_settings
    from tests.harness.ports import free_port
    from webapp import create_app

    env = base_env(f"sqlite:///{tmp_path}/unused.db", f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(load_settings({**env, "PUSH_COALESCE_WINDOW": "30"}), serve_sockets=False)
    with app.app_context():
        user, topic = uuid.uuid4(), uuid.uuid4()
        assert _offer(1, user, topic, T0).send and _offer(2, user, topic, T0 + 1).send


def test_a_big_topic_is_offered_in_batches_with_the_same_decisions(app):
    topic = uuid.uuid4()
    users = [uuid.uuid4() for _ in range(push_coalescing.OFFER_BATCH * 2 + 7)]
    members = [(u, i % 3 == 0) for i, u in enumerate(users)]
    first = push_coalescing.offer(1, topic, members, T0)
    assert len(first) == len(users) and all(o.send and o.count == 1 for o in first.values())
    second = push_coalescing.offer(2, topic, members, T0 + 1000)
    for i, user in enumerate(users):
        # Mentioned at the window's start already: the second message is held for everyone.
        assert not second[user].send and second[user].flush_in == pytest.approx(29.0), i
