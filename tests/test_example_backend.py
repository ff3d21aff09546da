"""examples/product_backend.py, the worked example of docs/INTEGRATION.md, keeps working.

A guide whose example has rotted is worse than none, so the script is run as its reader would
run it: a subprocess with BEACON_URL and BEACON_API_KEY, against a real stack (web, workers of
queues unread, push and webhooks) with a key from the CLI, and its ``verify_signature`` (the
one the docs quote) is held to the server's own signing. One backend (SQLite): what is tested
here is the example, not the database.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.conftest import PYTHON, ROOT, Stack, run_flask, shared_services_stack

EXAMPLE = ROOT / "examples" / "product_backend.py"
SUMMARY = (
    "Summary",
    "  users:   ann.acme, ben.acme provisioned",
    "  topic:   Order #5521 (acme-order-5521), 2 members",
    "  token:   minted for acme-user-1001, accepted by GET /api/topics",
)


@pytest.fixture(scope="module")
def example_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with shared_services_stack(
        request,
        "sqlite",
        "beacon_example_sqlite",
        name="example-sqlite",
        workers={
            "unread": ("unread",),
            "push": ("push", "-P", "gevent", "-c", "10"),
            "webhooks": ("webhooks", "-P", "gevent", "-c", "10"),
        },
        # The example's receiver listens on a free loopback port.
        WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
    ) as stack:
        yield stack


def run_example(stack: Stack, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BEACON_URL": stack.url, "BEACON_API_KEY": key}
    return subprocess.run(
        [PYTHON, str(EXAMPLE), "--timeout", "30", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_the_example_runs_and_runs_again(example_stack: Stack) -> None:
    key = run_flask(example_stack.env, "beacon", "create-api-key", "product-backend").stdout
    first = run_example(example_stack, key.strip())
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert lines[-6:-2] == list(SUMMARY), first.stdout
    assert lines[-2].startswith("  message: ") and "published once, the retry replayed" in lines[-2]
    message_id = lines[-2].split()[1]
    assert lines[-1] == f"  webhook: message.created for message {message_id}, signature verified"
    assert "user acme-user-1001 is Beacon user" in first.stdout and "(created)" in first.stdout

    # PUT is create-or-replace: a second run updates the same users and posts a new message.
    second = run_example(example_stack, key.strip())
    assert second.returncode == 0, second.stdout + second.stderr
    assert "(updated)" in second.stdout and "(created)" not in second.stdout
    assert lines[-2] not in second.stdout.splitlines()  # another message id
    # The example deletes its webhook on the way out.
    hooks = example_stack.api(None, "GET", "/api/admin/webhooks", headers=_bearer(key))
    assert hooks.status_code == 200 and hooks.json()["webhooks"] == []


def test_the_example_fails_loudly(example_stack: Stack) -> None:
    refused = run_example(example_stack, "bk_" + "x" * 43)
    assert refused.returncode == 1
    assert "401 invalid_key" in refused.stderr and "Summary" not in refused.stdout
    publish_key = run_flask(
        example_stack.env, "beacon", "create-api-key", "publisher", "--scope", "publish"
    ).stdout.strip()
    scoped = run_example(example_stack, publish_key)
    assert scoped.returncode == 1 and "403 insufficient_scope" in scoped.stderr


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.strip()}"}


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("product_backend", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_verify_signature_matches_the_servers_signing() -> None:
    from webapp.admin.webhooks import sign

    verify = _example().verify_signature
    secret, body = "whsec_test", b'{"id":"e1","type":"message.created","data":{}}'
    now = int(time.time())
    assert verify(secret, sign(secret, now, body), body)
    assert verify(secret, sign(secret, now - 299, body), body)
    assert not verify(secret, sign(secret, now - 301, body), body)  # too old: a replay
    assert not verify(secret, sign(secret, now + 301, body), body)
    assert not verify("whsec_other", sign(secret, now, body), body)
    assert not verify(secret, sign(secret, now, body), body + b" ")
    header = sign(secret, now, body)
    for forged in ("", "t=,v1=", header.split(",")[1], header.split(",")[0], header.upper()):
        assert not verify(secret, forged, body), forged
    assert verify(secret, sign(secret, now - 500, body), body, tolerance=600)
