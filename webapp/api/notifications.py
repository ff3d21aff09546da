"""``/api/notifications``: the VAPID key and the caller's push subscriptions."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from webapp.api.body import json_body
from webapp.auth import require_user
from webapp.errors import Unavailable
from webapp.services import context, subscriptions

bp = Blueprint("notifications", __name__, url_prefix="/api/notifications")


@bp.get("/vapid-public-key")
def vapid_public_key():
    """Public: the ``applicationServerKey`` for ``pushManager.subscribe``."""
    settings = context.settings()
    if not settings.push_enabled:
        raise Unavailable("push_disabled", "Web Push is not configured on this server")
    return jsonify({"public_key": settings.vapid_public_key})


@bp.post("/subscribe")
@require_user
def subscribe():
    payload, created = subscriptions.subscribe(
        g.user, json_body(), request.headers.get("User-Agent")
    )
    return jsonify(payload), 201 if created else 200


@bp.get("/subscriptions")
@require_user
def list_subscriptions():
    return jsonify({"subscriptions": subscriptions.list_for(g.user)})


@bp.delete("/unsubscribe/<subscription_id>")
@require_user
def unsubscribe(subscription_id: str):
    subscriptions.unsubscribe(g.user, subscription_id)
    return "", 204


@bp.delete("/unsubscribe-by-endpoint")
@require_user
def unsubscribe_by_endpoint():
    subscriptions.unsubscribe_by_endpoint(g.user, json_body())
    return "", 204
