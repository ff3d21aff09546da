"""Dialect-specific statements shared by services (PostgreSQL and SQLite both support them)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from webapp.extensions import db


def insert(table: Any) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the session's database."""
    dialect = db.session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def begin_snapshot() -> None:
    """Start a new read transaction whose queries all see one snapshot: REPEATABLE READ on
    PostgreSQL (READ COMMITTED gives each statement its own). SQLite has one writer, and a
    short read in WAL mode is not worth a transaction of its own. End it with a commit."""
    db.session.commit()
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
