"""``/api/admin/webhooks``: a product's backend registers the URLs Beacon POSTs events to.

Thin: each route parses its path and body and calls ``webapp.admin.webhooks``; every route
takes a service key of scope ``admin``. No route ever makes a request to a hook: deliveries
run in the ``webhooks`` workers.
"""

from __future__ import annotations

import uuid
from typing import cast

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from webapp.admin import webhooks
from webapp.admin.keys import require_key
from webapp.api.body import json_body
from webapp.errors import InvalidInput
from webapp.platform.validation import parse_uuid, require_object

bp = Blueprint("admin_webhooks", __name__, url_prefix="/api/admin/webhooks")


def _hook_id(raw: str) -> uuid.UUID:
    return cast(uuid.UUID, parse_uuid(raw, "webhook_id"))  # required: never None


@bp.post("")
@require_key("admin")
def create() -> ResponseReturnValue:
    data = require_object(json_body(), allowed={"url", "events"})
    hook = webhooks.create(
        webhooks.parse_url(data.get("url")), webhooks.parse_events(data.get("events"))
    )
    return jsonify(hook), 201


@bp.get("")
@require_key("admin")
def list_hooks() -> ResponseReturnValue:
    return jsonify({"webhooks": webhooks.list_hooks()})


@bp.get("/<webhook_id>")
@require_key("admin")
def get(webhook_id: str) -> ResponseReturnValue:
    return jsonify(webhooks.get(_hook_id(webhook_id)))


@bp.patch("/<webhook_id>")
@require_key("admin")
def set_enabled(webhook_id: str) -> ResponseReturnValue:
    data = require_object(json_body(), allowed={"enabled"})
    enabled = data.get("enabled")
    if not isinstance(enabled, bool):
        raise InvalidInput("invalid_enabled", "enabled must be true or false")
    return jsonify(webhooks.set_enabled(_hook_id(webhook_id), enabled))


@bp.delete("/<webhook_id>")
@require_key("admin")
def delete(webhook_id: str) -> ResponseReturnValue:
    webhooks.delete(_hook_id(webhook_id))
    return "", 204
