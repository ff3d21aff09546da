"""Dialect-specific statements shared by services (PostgreSQL and SQLite both support them)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from webapp.extensions import db


def insert(table: Any) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the session's database."""
    dialect = db.session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
