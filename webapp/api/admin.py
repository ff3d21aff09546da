"""``/api/admin``: the integration API, for a product's backend holding a service key.

Thin: each route turns its path and body into typed values and calls ``webapp.admin``.
Provisioning takes a key of scope ``admin``; publishing one of ``publish`` (or ``admin``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from webapp.admin import provisioning, publishing
from webapp.admin.keys import require_key
from webapp.admin.provisioning import MAX_TOKEN_TTL
from webapp.api.body import json_body
from webapp.platform import context
from webapp.platform.validation import (
    parse_bounded_int,
    parse_email,
    parse_external_id,
    parse_idempotency_key,
    parse_message_body,
    parse_name,
    parse_username,
    require_object,
)

bp = Blueprint("admin", __name__, url_prefix="/api/admin")


def _body(allowed: set[str]) -> dict[str, Any]:
    return require_object(json_body(), allowed=allowed)


def _created(payload: dict[str, Any], created: bool) -> tuple[Any, int]:
    return jsonify(payload), 201 if created else 200


# -- users -----------------------------------------------------------------------------------


@bp.put("/users/<external_id>")
@require_key("admin")
def put_user(external_id: str):
    data = _body({"username", "display_name", "email"})
    user, created = provisioning.put_user(
        parse_external_id(external_id, "external_id"),
        parse_username(data.get("username")),
        parse_name(data.get("display_name"), "display_name", 128, required=False),
        parse_email(data.get("email")),
    )
    return _created(provisioning.user_payload(user), created)


@bp.get("/users/<external_id>")
@require_key("admin")
def get_user(external_id: str):
    user = provisioning.find_user(parse_external_id(external_id, "external_id"))
    return jsonify(provisioning.user_payload(user))


@bp.delete("/users/<external_id>")
@require_key("admin")
def delete_user(external_id: str):
    provisioning.delete_user(parse_external_id(external_id, "external_id"))
    return "", 204


@bp.post("/users/<external_id>/token")
@require_key("admin")
def user_token(external_id: str):
    body = json_body()
    data = {} if body is None else require_object(body, allowed={"ttl"})
    ttl = data.get("ttl")
    return jsonify(
        provisioning.user_token(
            parse_external_id(external_id, "external_id"),
            None if ttl is None else parse_bounded_int(ttl, "ttl", 1, MAX_TOKEN_TTL),
        )
    )


# -- rooms and topics ------------------------------------------------------------------------


@bp.put("/rooms/<external_id>")
@require_key("admin")
def put_room(external_id: str):
    data = _body({"name"})
    room, created = provisioning.put_room(
        parse_external_id(external_id, "external_id"), parse_name(data.get("name"), "name", 128)
    )
    return _created(provisioning.room_payload(room), created)


@bp.delete("/rooms/<external_id>")
@require_key("admin")
def delete_room(external_id: str):
    provisioning.delete_room(parse_external_id(external_id, "external_id"))
    return "", 204


@bp.put("/rooms/<room_external_id>/topics/<external_id>")
@require_key("admin")
def put_topic(room_external_id: str, external_id: str):
    data = _body({"name"})
    topic, room, created = provisioning.put_topic(
        parse_external_id(room_external_id, "room_external_id"),
        parse_external_id(external_id, "external_id"),
        parse_name(data.get("name"), "name", 128),
    )
    return _created(provisioning.topic_payload(topic, room), created)


@bp.delete("/rooms/<room_external_id>/topics/<external_id>")
@require_key("admin")
def delete_topic(room_external_id: str, external_id: str):
    provisioning.delete_topic(
        parse_external_id(room_external_id, "room_external_id"),
        parse_external_id(external_id, "external_id"),
    )
    return "", 204


# -- memberships -----------------------------------------------------------------------------


@bp.put("/topics/<topic_external_id>/members/<user_external_id>")
@require_key("admin")
def put_member(topic_external_id: str, user_external_id: str):
    payload, created = provisioning.add_member(
        parse_external_id(topic_external_id, "topic_external_id"),
        parse_external_id(user_external_id, "user_external_id"),
    )
    return _created(payload, created)


@bp.delete("/topics/<topic_external_id>/members/<user_external_id>")
@require_key("admin")
def delete_member(topic_external_id: str, user_external_id: str):
    provisioning.remove_member(
        parse_external_id(topic_external_id, "topic_external_id"),
        parse_external_id(user_external_id, "user_external_id"),
    )
    return "", 204


# -- publishing ------------------------------------------------------------------------------


@bp.post("/messages")
@require_key("publish")
def publish_message():
    data = _body({"topic", "sender", "message", "idempotency_key"})
    key = data.get("idempotency_key")
    message, first = publishing.publish(
        parse_external_id(data.get("topic"), "topic"),
        parse_external_id(data.get("sender"), "sender"),
        parse_message_body(data.get("message"), context.settings().max_message_length),
        None if key is None else parse_idempotency_key(key),
    )
    response = jsonify(message)
    if not first:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 201
