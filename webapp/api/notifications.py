"""``/api/notifications``: the VAPID key, the caller's push subscriptions, preferences and
push history."""

from __future__ import annotations

import uuid

from flask import Blueprint, g, jsonify, request

from webapp.api.body import json_body, page_args
from webapp.auth import require_user
from webapp.delivery import decisions, devices, history, preferences, probe
from webapp.errors import Unavailable
from webapp.messaging.topics import member_topic
from webapp.platform import context, queue, rate_limit
from webapp.platform.validation import MAX_BIGINT, parse_query_int, parse_uuid

bp = Blueprint("notifications", __name__, url_prefix="/api/notifications")


@bp.get("/vapid-public-key")
def vapid_public_key():
    """Public: the ``applicationServerKey`` for ``pushManager.subscribe``."""
    settings = context.settings()
    if not settings.webpush_enabled:
        raise Unavailable("push_disabled", "Web Push is not configured on this server")
    return jsonify({"public_key": settings.vapid_public_key})


@bp.post("/subscribe")
@require_user
def subscribe():
    payload, created = devices.subscribe(g.user, json_body(), request.headers.get("User-Agent"))
    return jsonify(payload), 201 if created else 200


@bp.post("/devices")
@require_user
def register_device():
    """A mobile app's FCM or APNs token for the caller."""
    payload, created = devices.register_device(g.user, devices.parse_device(json_body()))
    return jsonify(payload), 201 if created else 200


@bp.delete("/devices/<device_id>")
@require_user
def delete_device(device_id: str):
    devices.unsubscribe(g.user, device_id)
    return "", 204


@bp.get("/subscriptions")
@require_user
def list_subscriptions():
    return jsonify({"subscriptions": devices.list_for(g.user)})


@bp.delete("/unsubscribe/<subscription_id>")
@require_user
def unsubscribe(subscription_id: str):
    devices.unsubscribe(g.user, subscription_id)
    return "", 204


@bp.delete("/unsubscribe-by-endpoint")
@require_user
def unsubscribe_by_endpoint():
    devices.unsubscribe_by_endpoint(g.user, json_body())
    return "", 204


@bp.get("/preferences")
@require_user
def get_preferences():
    return jsonify(preferences.get(g.user))


@bp.patch("/preferences")
@require_user
def update_preferences():
    return jsonify(preferences.update(g.user, json_body()))


@bp.put("/preferences/topics/<topic_id>")
@require_user
def set_topic_preference(topic_id: str):
    return jsonify(
        preferences.set_topic_level(g.user, parse_uuid(topic_id, "topic_id"), json_body())
    )


@bp.delete("/preferences/topics/<topic_id>")
@require_user
def clear_topic_preference(topic_id: str):
    preferences.clear_topic_level(g.user, parse_uuid(topic_id, "topic_id"))
    return "", 204


@bp.put("/preferences/rooms/<room_id>")
@require_user
def set_room_preference(room_id: str):
    return jsonify(preferences.set_room_level(g.user, parse_uuid(room_id, "room_id"), json_body()))


@bp.delete("/preferences/rooms/<room_id>")
@require_user
def clear_room_preference(room_id: str):
    preferences.clear_room_level(g.user, parse_uuid(room_id, "room_id"))
    return "", 204


@bp.get("/history")
@require_user
def push_history_page():
    before, limit = page_args()
    outcome = request.args.get("outcome") or None
    return jsonify(history.list_for(g.user, before=before, limit=limit, outcome=outcome))


@bp.get("/decisions")
@require_user
def notification_decisions():
    """Why each recent message of the caller's topics did or did not notify them."""
    limit = parse_query_int(request.args.get("limit"), "limit", 50, 1, decisions.KEEP)
    raw_before = request.args.get("before")
    before = parse_query_int(raw_before, "before", 0, 1, MAX_BIGINT) if raw_before else None
    topic_id = None
    if request.args.get("topic_id"):
        topic_id = parse_uuid(request.args.get("topic_id"), "topic_id")
        member_topic(g.user.id, topic_id)
    return jsonify(decisions.read(g.user, limit=limit, before=before, topic_id=topic_id))


@bp.post("/test")
@require_user
def test_notification():
    """A test notification to every device of the caller: 200 with each device's outcome, or
    202 with the job id when the worker takes longer (then ``test_push_result``)."""
    settings = context.settings()
    rate_limit.check("test_push", g.user.id, settings.rate_limit_test_push)
    if not settings.push_enabled:
        raise Unavailable("push_disabled", "push is not configured on this server")
    job_id = uuid.uuid4().hex
    queue.test_push(str(g.user.id), job_id)
    result = probe.wait(job_id, settings.test_push_wait)
    if result is None:
        return jsonify({"job_id": job_id, "done": False}), 202
    return jsonify(result)
