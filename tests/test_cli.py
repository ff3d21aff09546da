"""The ``beacon`` CLI prints exactly the value asked for (scripts parse it)."""

from __future__ import annotations

import re
import uuid

import jwt

from tests.conftest import JWT_SECRET, run_flask

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_cli_commands_print_exact_values(beacon):
    env = beacon.env
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = run_flask(env, "beacon", "create-user", name, "--display-name", "Cli User")
    assert re.fullmatch(UUID + r"\n", created.stdout), created.stdout
    user_id = created.stdout.strip()

    topic = run_flask(env, "beacon", "create-topic", f"chan-{name}", "general", "--member", name)
    assert re.fullmatch(f"{UUID} {UUID}\n", topic.stdout), topic.stdout
    again = run_flask(env, "beacon", "create-topic", f"chan-{name}", "general", "--member", name)
    assert again.stdout == topic.stdout, "create-topic is idempotent"

    token = run_flask(env, "beacon", "token", name, "--ttl", "120").stdout
    assert token.count("\n") == 1
    claims = jwt.decode(token.strip(), JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == user_id and claims["exp"] - claims["iat"] == 120


def test_cli_errors_exit_non_zero(beacon):
    env = beacon.env
    name = f"dup-{uuid.uuid4().hex[:8]}"
    run_flask(env, "beacon", "create-user", name)
    dup = run_flask(env, "beacon", "create-user", name, check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr and dup.stdout == ""
    missing = run_flask(env, "beacon", "token", "nobody-" + name, check=False)
    assert missing.returncode != 0 and "no user" in missing.stderr
    bad_member = run_flask(
        env, "beacon", "create-topic", "c", "t", "--member", "ghost", check=False
    )
    assert bad_member.returncode != 0 and "ghost" in bad_member.stderr
