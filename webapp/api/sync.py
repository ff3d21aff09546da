"""``GET /api/sync``: the catch-up answer of the ``sync`` event, for clients that poll REST."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from webapp.auth import require_user
from webapp.delivery import preferences
from webapp.messaging import sync
from webapp.platform import context, rate_limit
from webapp.platform.validation import MAX_BIGINT, parse_query_int

bp = Blueprint("sync", __name__, url_prefix="/api/sync")


@bp.get("")
@require_user
def sync_state():
    since = parse_query_int(request.args.get("since"), "since", 0, 0, MAX_BIGINT)
    rate_limit.check("sync", g.user.id, context.settings().rate_limit_sync)
    return jsonify(sync.snapshot(g.user, since, preferences.get))
