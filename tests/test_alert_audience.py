"""Who gets ``global_message_alert``: the topic's members by default, everyone on request.

The alert carries the topic name, the sender and a preview of the message, so by default it
goes only to the members' ``user:<id>`` rooms (every device, joined to the topic or not);
the authorization matrix (tests/security) checks that a non-member hears nothing.
``ALERT_AUDIENCE=everyone`` keeps the broadcast to every connected client, for workspaces
where every topic is public: a stack of its own shows a non-member gets it there. The loader
refuses any other value, so a typo cannot silently pick an audience.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config import load_settings
from tests.conftest import Stack, shared_services_stack


@pytest.fixture(scope="module")
def everyone(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A web process with ALERT_AUDIENCE=everyone (alerts need no worker: none is started)."""
    with shared_services_stack(
        request,
        "sqlite",
        "beacon_alert_everyone",
        name="alerts",
        workers={},
        ALERT_AUDIENCE="everyone",
    ) as stack:
        yield stack


def test_everyone_gets_the_alert_when_configured(everyone: Stack) -> None:
    try:
        alice, bob, carol = everyone.user("alice"), everyone.user("bob"), everyone.user("carol")
        topic = everyone.topic(alice, bob)
        carol_client = everyone.client(carol, "carol")  # not a member
        bob_client = everyone.client(bob, "bob")
        ack = everyone.client(alice, "alice").call("send_message", topic.ref(message="hi all"))
        assert ack["ok"], ack
        for client in (carol_client, bob_client):
            alert = client.wait_for_event(
                "global_message_alert", lambda p: p["message_id"] == ack["message"]["id"]
            )
            assert alert["topic_id"] == topic.topic_id and alert["preview"] == "hi all"
    finally:
        everyone.close_clients()


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, "members"), ("", "members"), (" Everyone ", "everyone")]
)
def test_alert_audience_setting(raw: str | None, expected: str) -> None:
    env = {} if raw is None else {"ALERT_AUDIENCE": raw}
    assert load_settings(env).alert_audience == expected


@pytest.mark.parametrize("raw", ["all", "topic", "members,everyone", "none"])
def test_an_unknown_alert_audience_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="ALERT_AUDIENCE must be 'members' or 'everyone'"):
        load_settings({"ALERT_AUDIENCE": raw})


def test_an_empty_room_list_reaches_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-socketio takes ``to=[]`` for "everyone": a topic left without members must not
    turn its alert into a broadcast."""
    from webapp import realtime

    published: list[object] = []

    class Writer:
        def emit(
            self, event: str, data: object, to: object = None, skip_sid: object = None
        ) -> None:
            published.append(to)

    monkeypatch.setattr(realtime, "_writer", lambda _url: Writer())
    realtime.emit("redis://unused", "global_message_alert", {}, to=[])
    realtime.emit("redis://unused", "global_message_alert", {}, to=["user:1"])
    assert published == [["user:1"]]
