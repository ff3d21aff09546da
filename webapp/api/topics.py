"""The caller's topics with unread counts, a topic's messages and read receipts, and mark as
unread (the REST twin of the ``mark_as_unread`` event)."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from webapp.api.body import json_body, page_args
from webapp.auth import require_user
from webapp.messaging import messages, receipts, unread
from webapp.messaging.topics import topics_of
from webapp.platform import context, rate_limit
from webapp.platform.validation import (
    parse_positive_int,
    parse_query_int,
    parse_uuid,
    require_object,
)

bp = Blueprint("topics", __name__, url_prefix="/api/topics")

MAX_RECEIPTS_PAGE = 1000


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


@bp.get("/<topic_id>/receipts")
@require_user
def topic_receipts(topic_id: str):
    limit = parse_query_int(request.args.get("limit"), "limit", 100, 1, MAX_RECEIPTS_PAGE)
    return jsonify(receipts.list_receipts(g.user, parse_uuid(topic_id, "topic_id"), limit))


@bp.post("/<topic_id>/unread")
@require_user
def mark_unread(topic_id: str):
    rate_limit.check("mark_as_unread", g.user.id, context.settings().rate_limit_mark_as_unread)
    topic = parse_uuid(topic_id, "topic_id")
    data = require_object(json_body(), allowed={"message_id"})
    message_id = parse_positive_int(data.get("message_id"), "message_id")
    return jsonify(unread.mark_as_unread(g.user, topic, None, message_id))
