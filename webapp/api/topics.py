"""The caller's topics with unread counts, and a topic's messages."""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from webapp.api.body import page_args
from webapp.auth import require_user
from webapp.messaging import messages
from webapp.messaging.topics import topics_of
from webapp.platform.validation import parse_uuid

bp = Blueprint("topics", __name__, url_prefix="/api/topics")


@bp.get("")
@require_user
def list_topics():
    return jsonify({"topics": topics_of(g.user.id)})


@bp.get("/<topic_id>/messages")
@require_user
def topic_messages(topic_id: str):
    before, limit = page_args()
    page = messages.list_messages(
        g.user, parse_uuid(topic_id, "topic_id"), before=before, limit=limit
    )
    return jsonify(page)
