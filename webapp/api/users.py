"""Who the caller is, and who is online."""

from __future__ import annotations

import uuid

from flask import Blueprint, g, jsonify
from sqlalchemy import select

from webapp.auth import require_user
from webapp.extensions import db
from webapp.models import User
from webapp.presence.store import presence
from webapp.presence.user_status import user_status_payload

bp = Blueprint("users", __name__, url_prefix="/api/users")


@bp.get("/me")
@require_user
def me():
    return jsonify(user_status_payload(g.user))


@bp.get("/online")
@require_user
def online():
    """Online users as Redis counts them (the live truth, across all web processes)."""
    ids = [uuid.UUID(u) for u in presence().online_user_ids()]
    users = db.session.execute(select(User).where(User.id.in_(ids)).order_by(User.username))
    return jsonify(
        {"users": [{**user_status_payload(u), "is_online": True} for u in users.scalars()]}
    )
