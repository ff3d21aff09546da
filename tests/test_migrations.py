"""Migrations build the schema on both backends and match the models."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from tests.conftest import base_env, make_database_url, run_flask


@pytest.fixture
def empty_database(backend, run_dir, request):
    return make_database_url(backend, f"beacon_migrations_{backend}", run_dir, request)


def test_upgrade_check_downgrade_upgrade(empty_database, redis_server):
    env = base_env(empty_database, redis_server.url)
    run_flask(env, "db", "upgrade")
    engine = create_engine(empty_database)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {
            "users",
            "channels",
            "topics",
            "topic_members",
            "messages",
            "push_subscriptions",
            "processed_events",
        } <= tables
        uniques = inspect(engine).get_unique_constraints("topic_members")
        assert any(set(u["column_names"]) == {"topic_id", "user_id"} for u in uniques)
        fks = inspect(engine).get_foreign_keys("push_subscriptions")
        assert all(fk["name"] for fk in fks), "every constraint needs a name (SQLite batch mode)"
    finally:
        engine.dispose()

    check = run_flask(env, "db", "check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr

    run_flask(env, "db", "downgrade", "base")
    engine = create_engine(empty_database)
    try:
        assert "users" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    run_flask(env, "db", "upgrade")
