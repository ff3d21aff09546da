"""What an operator's Flower shows: task ids and numbers, never what users wrote; and its
password is not on its command line, which every local user can read with ``ps``."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.conftest import ROOT
from tests.harness.ports import free_port
from tests.harness.processes import ManagedProcess
from tests.harness.waiting import wait_until
from tests.push_helpers import delivered, send, subscribe

AUTH = ("admin", "s3cret-flower-password")


def test_flower_shows_no_message_text_and_keeps_its_password_off_the_command_line(
    beacon, run_dir, reliability
):
    port = free_port()
    env = {**beacon.env, "FLOWER_BASIC_AUTH": ":".join(AUTH), "FLOWER_PORT": str(port)}
    flower = ManagedProcess("flower-secrets", ["./scripts/flower.sh"], env, ROOT, run_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        flower.wait_ready(
            lambda: requests.get(url, timeout=2).status_code == 401,
            timeout=60,
            what="refusing anonymous requests",
        )
        cmdline = Path(f"/proc/{flower.pid}/cmdline").read_bytes()
        assert b"flower" in cmdline and AUTH[1].encode() not in cmdline

        alice, bob = beacon.user("alice"), beacon.user("bob")
        topic = beacon.topic(alice, bob)
        sub, _ = subscribe(beacon, bob)
        secret = "the launch code is 0000 (private)"

        def tasks() -> dict:
            return requests.get(url + "/api/tasks", auth=AUTH, timeout=10).json()

        def listed() -> bool:
            return {"beacon.push.fan_out", "beacon.push.send_batch"} <= {
                t.get("name") for t in tasks().values()
            }

        # Flower lists the tasks whose events it saw; it starts listening some time after it
        # answers HTTP, so messages go out until one's tasks are listed.
        for sent in range(1, 7):
            send(beacon, alice, topic, secret)
            delivered(beacon, sub, count=sent)  # its push tasks have run
            try:
                wait_until(listed, timeout=5, message="flower has not listed the push tasks")
                break
            except TimeoutError:
                if sent == 6:
                    raise
        shown = json.dumps(tasks())
        assert "launch code" not in shown and topic.topic_id not in shown
    finally:
        flower.stop()
    reliability.record(
        "input",
        "Flower's task list after a push, and its process's command line",
        expected="ids and numbers only; no message text, no password",
        observed={"nothing secret shown": 1},
    )
