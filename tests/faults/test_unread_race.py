"""``mark_as_read`` racing a flood of unread increments (PostgreSQL, real processes).

Readers loop ``mark_as_read`` over Socket.IO, as the client does, on one web process while a
sender floods their topic through a second web process and the unread worker applies one
increment per message. An increment that commits between the moment ``mark_as_read`` looks at
the newest message and the moment it resets the count must not be wiped out: that message is
after the read marker, so it must stay counted.

That window is a few hundred microseconds, so the test widens it the way production does now
and then: the readers' web process stalls (SIGSTOP/SIGCONT, like a long GC pause or a starved
CPU) for 50 ms at a time, while the other web process and the worker go on. A lost
increment only stays lost if no later ``mark_as_read`` of that reader repairs it, so the
readers stop one after the other *during* the flood (their last reset is the one checked),
over several rounds. Once every increment of the flood is applied (its ``unread:<id>`` marker
exists), each reader's stored count must equal the messages after their
``last_read_message_id`` that they did not send, read from the database.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from tests.harness.processes import ManagedProcess
from tests.harness.sio_client import RecordingClient
from tests.harness.waiting import wait_until

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.conftest import TestTopic

READERS = 12
SENDERS = 3  # clients of the flooding user, sending in parallel
ROUNDS = 4
MESSAGES = 120  # per round
STALL = 0.05  # seconds the readers' web process is stopped, then as long running


def _applied(stack, message_ids: list[int]) -> bool:
    from webapp.extensions import db
    from webapp.models import ProcessedEvent

    keys = [f"unread:{m}" for m in message_ids]
    with stack.app.app_context():
        try:
            return db.session.execute(
                select(func.count()).select_from(ProcessedEvent).where(ProcessedEvent.key.in_(keys))
            ).scalar_one() == len(keys)
        finally:
            db.session.remove()


def _stored_and_expected(stack, topic, user) -> tuple[int, int, int | None]:
    """(unread_count, messages after the marker not sent by the user, the marker)."""
    from webapp.extensions import db
    from webapp.models import Message, TopicMember

    topic_id, user_id = uuid.UUID(topic.topic_id), uuid.UUID(user.id)
    with stack.app.app_context():
        try:
            count, marker = db.session.execute(
                select(TopicMember.unread_count, TopicMember.last_read_message_id).where(
                    TopicMember.topic_id == topic_id, TopicMember.user_id == user_id
                )
            ).one()
            after = db.session.execute(
                select(func.count())
                .select_from(Message)
                .where(
                    Message.topic_id == topic_id,
                    Message.id > (marker or 0),
                    Message.sender_id != user_id,
                )
            ).scalar_one()
            return count, after, marker
        finally:
            db.session.remove()


class Staller:
    """Stops and continues a process over and over until ``stop()`` (the injected fault)."""

    def __init__(self, proc: ManagedProcess) -> None:
        self.proc = proc
        self.stalls = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.proc.send_signal(signal.SIGSTOP)
            self.stalls += 1
            self._done.wait(STALL)  # the stall itself: a duty cycle, not a wait for a result
            self.proc.send_signal(signal.SIGCONT)
            self._done.wait(STALL)

    def __enter__(self) -> Staller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.proc.send_signal(signal.SIGCONT)


def _flood_round(
    topic: TestTopic, readers: list[RecordingClient], senders: list[RecordingClient], text: str
) -> tuple[list[int], list[int]]:
    """Readers loop ``mark_as_read`` while the senders send ``MESSAGES``; reader i stops once
    ``stop_at[i]`` are sent: its last reset races increments still coming, and nothing after it
    repairs a count it got wrong. Returns the message ids and each reader's number of resets."""
    sent: list[int] = []
    errors: list[BaseException] = []
    done = [0] * len(readers)
    stop_at = [MESSAGES * (i + 2) // (len(readers) + 3) for i in range(len(readers))]

    def read(i: int) -> None:
        try:
            while len(sent) < stop_at[i]:
                ack = readers[i].call("mark_as_read", topic.ref())
                assert ack["ok"], ack
                done[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def send(client: RecordingClient) -> None:
        try:
            while len(sent) < MESSAGES:
                ack = client.call("send_message", topic.ref(message=text))
                assert ack["ok"], ack
                sent.append(ack["message"]["id"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(readers))]
    threads += [threading.Thread(target=send, args=(c,)) for c in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return sent, done


@pytest.mark.timeout(300)
def test_mark_as_read_racing_a_flood_loses_no_increment(make_stack, reliability):
    stack = make_stack(
        "postgresql",
        workers={"unread": ("unread", "-c", "2")},
        RATE_LIMIT_SEND_MESSAGE="off",
    )
    flood_url = stack.start_web("web-flood")
    sender = stack.user("flood")
    readers = [stack.user(f"reader{i}") for i in range(READERS)]
    topic = stack.topic(sender, *readers)
    floods = []
    for i in range(SENDERS):
        client = stack.new_client(f"flood{i}")
        client.connect(flood_url, sender.token)
        floods.append(client)
    clients = [stack.client(r) for r in readers]  # on the first web process, the stalled one

    tally: Counter[str] = Counter()
    mismatches: list[str] = []
    marks = stalls = 0
    for round_no in range(ROUNDS):
        with Staller(stack.web) as staller:
            sent, done = _flood_round(topic, clients, floods, f"round {round_no}")
        assert all(done), done  # every reader reset at least once during the flood
        marks += sum(done)
        stalls += staller.stalls
        wait_until(
            lambda sent=sent: _applied(stack, sent),
            timeout=60,
            message="the flood's increments were not all applied",
        )
        for reader in readers:
            count, after, marker = _stored_and_expected(stack, topic, reader)
            if count == after:
                tally["exact"] += 1
            else:
                tally[f"off by {count - after}"] += 1
                mismatches.append(
                    f"round {round_no} {reader.username}: unread_count {count}, "
                    f"{after} messages after marker {marker}"
                )

    assert not mismatches, f"{len(mismatches)} of {READERS * ROUNDS}: {mismatches}"
    reliability.record(
        "faults",
        "mark_as_read racing a flood of unread increments (2 web processes, the readers' one "
        f"stalled {STALL * 1000:g} ms at a time)",
        expected="after the increments settle, every unread_count == messages after the "
        "reader's last_read_message_id not sent by them",
        observed=f"{READERS} readers x {ROUNDS} rounds of {MESSAGES} messages from "
        f"{SENDERS} clients, {marks} mark_as_read, {stalls} stalls: "
        + ", ".join(f"{name} x{n}" for name, n in tally.most_common()),
        count=READERS * ROUNDS,
        backend=stack.backend,
    )
