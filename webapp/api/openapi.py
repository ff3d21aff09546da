"""``GET /api/openapi.json``: an OpenAPI 3.1 description of every HTTP route, user and admin.

Written here by hand, next to the routes it describes, because the routes parse their bodies
by hand too (there is no schema library to generate it from). It cannot drift silently:
tests/test_openapi.py validates it, requires its (path, method) pairs to be exactly the app's
URL rules and their path parameters to be declared, and checks real answers against its
schemas. docs/PROTOCOL.md is the prose; this is the machine-readable twin.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from webapp.admin.provisioning import MAX_TOKEN_TTL
from webapp.delivery.decisions import KEEP as DECISIONS_KEPT
from webapp.delivery.decisions import KINDS as DECISION_KINDS
from webapp.delivery.devices import MAX_LABEL
from webapp.delivery.history import OUTCOMES
from webapp.delivery.preferences import MAX_EMAIL_DELAY, MAX_SNOOZE
from webapp.models import NOTIFY_LEVELS
from webapp.platform.events import EVENTS
from webapp.platform.outbound.addresses import MAX_URL_LENGTH
from webapp.platform.validation import MAX_BIGINT

# The version of the API description: the project's version (pyproject.toml, checked by the
# tests).
API_VERSION = "0.1.0"
JSON = "application/json"

bp = Blueprint("openapi", __name__)


@bp.get("/api/openapi.json")
def openapi_document() -> ResponseReturnValue:
    """Public: the document is no secret, and clients and tools fetch it before any login."""
    return jsonify(build_document())


Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = (), **extra: Any) -> Schema:
    """An object whose properties are all required except ``optional``."""
    required = [name for name in properties if name not in optional]
    return {"type": "object", "properties": properties, "required": required, **extra}


def _closed(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """A request body the route refuses unknown fields of (``400 unknown_field``)."""
    return _obj(properties, optional=optional, additionalProperties=False)


STRING: Schema = {"type": "string"}
UUID: Schema = {"type": "string", "format": "uuid"}
TIME: Schema = {"type": "string", "format": "date-time"}
COUNT: Schema = {"type": "integer", "minimum": 0}
ROW_ID: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_BIGINT}
# A read marker: not a row id, since marking the first message unread leaves it at 0.
READ_MARKER: Schema = {
    "type": ["integer", "null"],
    "minimum": 0,
    "maximum": MAX_BIGINT,
    "description": "Every message of the topic up to this id is read (null: none ever was; "
    "`mark_as_unread` sets it to the message's id - 1).",
}
VERSION: Schema = {
    "type": "integer",
    "minimum": 0,
    "description": "Grows with every change of the member's unread count or read marker: a "
    "client keeps, per topic and user, the state with the highest version.",
}
LEVEL: Schema = {"type": "string", "enum": list(NOTIFY_LEVELS)}
PRESENCE_STATUS: Schema = {
    "type": "string",
    "enum": ["active", "idle", "offline"],
    "description": "active: some connection in use; idle: every connection idle; offline.",
}
EMAIL_DELAY: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_EMAIL_DELAY}
OUTCOME: Schema = {"type": "string", "enum": list(OUTCOMES)}
CHANNEL: Schema = {"enum": ["webpush", "fcm", "apns"]}
TEST_JOB_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
CLOCK: Schema = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}
# An integrating product's own id of a user, room or topic (webapp/platform/validation.py).
EXTERNAL_ID: Schema = {"type": "string", "pattern": "^(?!\\.\\.?$)[A-Za-z0-9._:@+-]{1,128}$"}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj(
        {
            "error": {"type": "string", "description": "A stable machine-readable code."},
            "message": {"type": "string", "description": "For humans."},
            "retry_after": {
                "type": "number",
                "description": "With `rate_limited`: seconds to wait (also `Retry-After`).",
            },
            "max_length": {"type": "integer", "description": "With `message_too_long`."},
        },
        optional=("retry_after", "max_length"),
        description="Every REST error; some codes carry extra fields.",
        additionalProperties=True,
    ),
    "UserStatus": _obj(
        {
            "user_id": UUID,
            "username": STRING,
            "display_name": {"type": "string", "description": "Falls back to the username."},
            "is_online": {"type": "boolean"},
            "status": PRESENCE_STATUS,
            "last_seen_at": _or_null(TIME),
        },
        description="A user's status, as in the `user_status_change` event.",
    ),
    "TopicRow": _obj(
        {
            "topic_id": UUID,
            "topic_name": STRING,
            "room_id": UUID,
            "room_name": STRING,
            "unread_count": COUNT,
            "last_read_message_id": READ_MARKER,
            "version": VERSION,
        },
        description="One of the caller's topics with the caller's unread count.",
    ),
    "ReadState": _obj(
        {
            "topic_id": UUID,
            "room_id": UUID,
            "user_id": UUID,
            "unread_count": COUNT,
            "last_read_message_id": READ_MARKER,
            "read_at": {**_or_null(TIME), "description": "When the marker last moved."},
            "version": VERSION,
        },
        description="The caller's unread count and read marker in a topic after a change (as "
        "the `mark_as_unread` ack and the reader's own `messages_read`).",
    ),
    "UnreadInput": _closed(
        {
            "message_id": {
                **ROW_ID,
                "description": "The first unread message: the marker becomes `message_id - 1`, "
                "backwards or forwards.",
            }
        }
    ),
    "Receipt": _obj(
        {
            "user_id": UUID,
            "last_read_message_id": READ_MARKER,
            "read_at": _or_null(TIME),
            "version": VERSION,
        },
        description="Another member's read marker (as their `messages_read` to the others).",
    ),
    "ReceiptRow": _obj(
        {
            "user_id": UUID,
            "username": STRING,
            "display_name": {"type": "string", "description": "Falls back to the username."},
            "last_read_message_id": READ_MARKER,
            "read_at": _or_null(TIME),
            "version": VERSION,
        },
        description="Another member's read marker, with who they are.",
    ),
    "Receipts": _obj(
        {
            "topic_id": UUID,
            "enabled": {
                "type": "boolean",
                "description": "False (and no rows) when the server's `READ_RECEIPTS` is off or "
                "the caller does not share their own (`share_read_receipts`).",
            },
            "receipts": {"type": "array", "items": _ref("ReceiptRow")},
            "has_more": {"type": "boolean", "description": "More rows than `limit`."},
        },
        description="The read markers of the topic's other members who share theirs, newest "
        "marker first.",
    ),
    "SyncTopic": {
        "allOf": [
            _ref("TopicRow"),
            _obj(
                {
                    "messages": {
                        "type": "array",
                        "items": _ref("Message"),
                        "maxItems": 200,
                        "description": "Messages with an id over `since`, newest first (at most "
                        "200 per topic and 1000 in all, the newest kept).",
                    },
                    "has_more": {
                        "type": "boolean",
                        "description": "Older messages over `since` were left out.",
                    },
                    "next_before": {
                        **_or_null(ROW_ID),
                        "description": "With `has_more`: `before` for `GET "
                        "/api/topics/{topic_id}/messages`, paged until the ids reach `since`.",
                    },
                    "receipts": {
                        "type": "array",
                        "items": _ref("Receipt"),
                        "maxItems": 100,
                        "description": "Other members who share their receipts, newest read "
                        "first; empty when `receipts_enabled` is false.",
                    },
                }
            ),
        ],
        "description": "One of the caller's topics, as in `GET /api/topics`, with what is new.",
    },
    "Sync": _obj(
        {
            "cursor": {
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": MAX_BIGINT,
                "description": "The newest message id in the caller's topics (`since` when "
                "nothing is newer; null when there is no message at all): the next `since`.",
            },
            "receipts_enabled": {
                "type": "boolean",
                "description": "The server's `READ_RECEIPTS` and the caller's "
                "`share_read_receipts`.",
            },
            "topics": {
                "type": "array",
                "items": _ref("SyncTopic"),
                "description": "Every topic of the caller (one missing was removed).",
            },
            "users": {
                "type": "array",
                "items": _ref("UserStatus"),
                "description": "The caller and everyone sharing a topic with them, online "
                "first (at most 1000).",
            },
            "users_has_more": {
                "type": "boolean",
                "description": "More users share a topic with the caller than `users` holds.",
            },
            "preferences": _ref("Preferences"),
        },
        optional=("users_has_more",),
        description="A catch-up snapshot, also the `sync` event's ack. Connect (and join the "
        "open topic) first, then sync: what is committed after the snapshot arrives live; "
        "merge messages by id.",
    ),
    "Sender": _obj(
        {
            "id": UUID,
            "username": {"type": ["string", "null"], "description": "Null once deleted."},
            "name": STRING,
            "deleted": {"type": "boolean", "const": True, "description": "A deleted user."},
        },
        optional=("deleted",),
    ),
    "Message": _obj(
        {
            "id": ROW_ID,
            "message_id": {**ROW_ID, "description": "The same as `id`."},
            "topic_id": UUID,
            "room_id": UUID,
            "topic_name": STRING,
            "sender": _ref("Sender"),
            "body": STRING,
            "created_at": TIME,
        },
        description="A message: the `new_message` event's payload.",
    ),
    "MessagePage": _obj(
        {
            "messages": {"type": "array", "items": _ref("Message")},
            "next_before": {
                **_or_null(ROW_ID),
                "description": "`before` for the next (older) page; null on the last page.",
            },
        },
        description="A page of a topic's messages, newest first.",
    ),
    "PushSubscriptionJSON": _obj(
        {
            "endpoint": {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH},
            "expirationTime": {"type": ["number", "null"]},
            "keys": _obj(
                {
                    "p256dh": {
                        "type": "string",
                        "description": "base64url of a 65-byte uncompressed P-256 point",
                    },
                    "auth": {"type": "string", "description": "base64url of 16 bytes"},
                }
            ),
            "label": {
                "type": ["string", "null"],
                "maxLength": MAX_LABEL,
                "description": "Names the device (else the User-Agent header does).",
            },
        },
        optional=("expirationTime", "label"),
        description="The browser's `PushSubscription.toJSON()`, with an optional `label`.",
    ),
    "Subscription": _obj(
        {
            "id": UUID,
            "type": {"const": "webpush"},
            "endpoint": STRING,
            "push_service": {"type": "string", "description": "The endpoint's origin."},
            "user_agent": {"type": ["string", "null"]},
            "created_at": TIME,
            "last_success_at": _or_null(TIME),
            "failure_count": COUNT,
        },
        description="One of the caller's push subscriptions (never its keys).",
    ),
    "DeviceRegistration": _closed(
        {
            "platform": {"enum": ["fcm", "apns"]},
            "token": {
                "type": "string",
                "description": "FCM: 32-4096 of letters, digits, `_ : -`. APNs: 64-200 hex digits.",
            },
            "app_id": {
                "type": ["string", "null"],
                "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                "description": "The Android package or iOS bundle id (APNs: the `apns-topic`; "
                "default `APNS_TOPIC`).",
            },
            "label": {"type": ["string", "null"], "maxLength": MAX_LABEL},
        },
        optional=("app_id", "label"),
    ),
    "Device": _obj(
        {
            "id": UUID,
            "type": {"enum": ["fcm", "apns"]},
            "app_id": {"type": ["string", "null"]},
            "label": {"type": ["string", "null"]},
            "token_hint": {"type": "string", "description": "The token's last 8 characters."},
            "created_at": TIME,
            "last_success_at": _or_null(TIME),
            "failure_count": COUNT,
        },
        description="One of the caller's mobile devices (never its whole token).",
    ),
    "QuietHours": _closed(
        {"start": CLOCK, "end": CLOCK},
    )
    | {"description": "Local time in `time_zone`; a start after the end spans midnight."},
    "RoomLevel": _obj({"room_id": UUID, "level": _or_null(LEVEL), "email_level": _or_null(LEVEL)}),
    "TopicLevel": _obj(
        {
            "topic_id": UUID,
            "room_id": UUID,
            "level": _or_null(LEVEL),
            "email_level": _or_null(LEVEL),
        },
        description="A topic's own levels; null: the room's (or the user's) applies.",
    ),
    "EmailState": _obj(
        {
            "address": {
                "type": ["string", "null"],
                "description": "Set by the integration API or the CLI.",
            },
            "enabled": {"type": "boolean", "description": "This server sends email."},
            "failing": {
                "type": "boolean",
                "description": (
                    "The address was refused EMAIL_BOUNCE_LIMIT times in a row: no more "
                    "email until it changes."
                ),
            },
            "failing_since": _or_null(TIME),
            "delay_default": {"type": "integer", "description": "EMAIL_DELAY, in seconds."},
        },
        description="Where missed-message digests go (read-only).",
    ),
    "Preferences": _obj(
        {
            "level": LEVEL,
            "quiet_hours": _or_null(_ref("QuietHours")),
            "time_zone": {"type": "string", "description": "An IANA name, default UTC."},
            "snooze_until": {
                **_or_null(TIME),
                "description": "Null when no snooze is running.",
            },
            "dnd_allow_mentions": {"type": "boolean"},
            "dnd_active": {
                "type": "boolean",
                "description": "A snooze or the quiet hours are in effect now.",
            },
            "push_when_idle": {"type": "boolean"},
            "email_level": LEVEL,
            "email_delay": {
                **_or_null(EMAIL_DELAY),
                "description": "Null: the server's EMAIL_DELAY.",
            },
            "share_read_receipts": {
                "type": "boolean",
                "description": "The caller's read markers are shown to the other members, and "
                "theirs to the caller (default true).",
            },
            "email": _ref("EmailState"),
            "rooms": {"type": "array", "items": _ref("RoomLevel")},
            "topics": {"type": "array", "items": _ref("TopicLevel")},
        },
        description="The caller's push and email preferences and overrides.",
    ),
    "PreferencesUpdate": _closed(
        {
            "level": LEVEL,
            "quiet_hours": _or_null(_ref("QuietHours")),
            "time_zone": {"type": "string", "minLength": 1, "maxLength": 64},
            "snooze_until": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "With a UTC offset, at most 366 days ahead; past or null ends it.",
            },
            "snooze_minutes": {
                "type": "integer",
                "minimum": 0,
                "maximum": int(MAX_SNOOZE.total_seconds()) // 60,
                "description": "A snooze from now; 0 ends it.",
            },
            "dnd_allow_mentions": {"type": "boolean"},
            "push_when_idle": {
                "type": "boolean",
                "description": "Push while every connection of the user is idle (default true).",
            },
            "email_level": LEVEL,
            "email_delay": _or_null(EMAIL_DELAY),
            "share_read_receipts": {
                "type": "boolean",
                "description": "Share read receipts (default true); false also hides the "
                "others' from the caller.",
            },
        },
        optional=(
            "level",
            "quiet_hours",
            "time_zone",
            "snooze_until",
            "snooze_minutes",
            "dnd_allow_mentions",
            "push_when_idle",
            "email_level",
            "email_delay",
            "share_read_receipts",
        ),
    )
    | {
        "not": {"required": ["snooze_until", "snooze_minutes"]},
        "description": "Any of the fields; those left out keep their value.",
    },
    "LevelInput": _closed(
        {"level": _or_null(LEVEL), "email_level": _or_null(LEVEL)},
        optional=("level", "email_level"),
    )
    | {
        "minProperties": 1,
        "description": (
            "Either level or both; null clears that one (an override left with no level "
            "is deleted)."
        ),
    },
    "PushRecord": _obj(
        {
            "id": ROW_ID,
            "created_at": TIME,
            "outcome": OUTCOME,
            "status_code": {"type": ["integer", "null"]},
            "reason": {"type": ["string", "null"]},
            "type": {"type": "string", "description": "`message` or `mention`."},
            "message_count": {"type": "integer", "minimum": 1},
            "topic_id": _or_null(UUID),
            "message_id": _or_null(ROW_ID),
            "subscription_id": UUID,
            "channel": CHANNEL,
            "push_service": {
                "type": "string",
                "description": "Web Push: the endpoint's origin; else `fcm` or `apns`.",
            },
        },
        description="One push to one subscription that ended.",
    ),
    "PushHistoryPage": _obj(
        {
            "pushes": {"type": "array", "items": _ref("PushRecord")},
            "next_before": _or_null(ROW_ID),
        }
    ),
    "DeviceOutcome": _obj(
        {
            "device_id": {
                **UUID,
                "description": "The device's id, as `GET /api/notifications/subscriptions` "
                "lists it while it exists.",
            },
            "channel": CHANNEL,
            "device_label": {
                "type": ["string", "null"],
                "description": "The device's label (or the browser's User-Agent).",
            },
            "push_service": {
                "type": "string",
                "description": "Web Push: the endpoint's origin; else `fcm` or `apns`.",
            },
            "outcome": OUTCOME,
            "status": {
                "type": ["integer", "null"],
                "description": "The push service's HTTP status (null: no answer).",
            },
            "reason": {"type": ["string", "null"], "description": "Why it failed, as in history."},
        },
        description="How a push ended on one of the caller's devices.",
    ),
    "Decision": _obj(
        {
            "message_id": ROW_ID,
            "topic_id": UUID,
            "created_at": {**TIME, "description": "When the decision was made."},
            "decision": {"type": "string", "enum": list(DECISION_KINDS)},
            "rule": {
                "enum": ["topic", "room", "user", None],
                "description": "With `level`: which setting filtered it; else null.",
            },
            "detail": {
                "enum": ["active", "idle", "snooze", "quiet_hours", None],
                "description": "With `online`: `active` or `idle`; with `dnd`: `snooze` or "
                "`quiet_hours`; else null.",
            },
            "carried_by": {
                **_or_null(ROW_ID),
                "description": "With `coalesced`: the message id of the push that carried it "
                "(null while its window is open).",
            },
            "deliveries": {
                "type": "array",
                "items": _ref("DeviceOutcome"),
                "description": "With `pushed`, `coalesced` (the carrying push) and `failed`: each "
                "device's outcome, from the push history (empty while in flight).",
            },
        },
        description="Why a message did or did not notify the caller (docs/PROTOCOL.md, "
        "Notification decisions).",
    ),
    "DecisionPage": _obj(
        {
            "decisions": {"type": "array", "items": _ref("Decision")},
            "next_before": {
                **_or_null(ROW_ID),
                "description": "`before` for the next (older) page; null on the last page.",
            },
        },
        description="The caller's own decisions, for topics they are a member of now, newest "
        "message first.",
    ),
    "TestPushResult": _obj(
        {
            "job_id": TEST_JOB_ID,
            "done": {"const": True},
            "deliveries": {"type": "array", "items": _ref("DeviceOutcome")},
        },
        description="How the test notification ended on each of the caller's devices (as "
        "the `test_push_result` event).",
    ),
    "TestPushPending": _obj(
        {"job_id": TEST_JOB_ID, "done": {"const": False}},
        description="Still sending: `test_push_result` with this `job_id` follows.",
    ),
    "Readiness": _obj(
        {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "checks": _obj(
                {
                    "database": {"type": "string", "description": "`ok` or `error: <type>`"},
                    "redis": {"type": "string", "description": "`ok` or `error: <type>`"},
                }
            ),
        }
    ),
    "DevEmail": _obj(
        {
            "subject": STRING,
            "from": STRING,
            "to": STRING,
            "date": _or_null(TIME),
            "text": _or_null(STRING),
            "html": _or_null(STRING),
            "list_unsubscribe": _or_null(STRING),
        },
        description="An email as the development mailbox holds it (`GET /api/demo/emails`).",
    ),
    "AdminUser": _obj(
        {
            "id": UUID,
            "external_id": EXTERNAL_ID,
            "username": STRING,
            "display_name": {"type": ["string", "null"]},
            "email": {"type": ["string", "null"]},
            "email_failing": {"type": "boolean"},
            "is_online": {"type": "boolean"},
            "status": PRESENCE_STATUS,
            "last_seen_at": _or_null(TIME),
            "created_at": TIME,
        },
        description="A user as the integration API sees it (`display_name` as given).",
    ),
    "AdminUserInput": _closed(
        {
            "username": {
                "type": "string",
                "pattern": "^\\S{1,64}$",
                "description": "Unique; 1-64 printable characters without spaces.",
            },
            "display_name": {
                "type": ["string", "null"],
                "maxLength": 128,
                "description": "Stripped; 1-128 printable characters.",
            },
            "email": {"type": ["string", "null"], "format": "email", "maxLength": 254},
        },
        optional=("display_name", "email"),
    ),
    "TokenInput": _closed(
        {
            "ttl": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TOKEN_TTL,
                "description": "Seconds (default `JWT_DEFAULT_TTL`).",
            }
        },
        optional=("ttl",),
    ),
    "IssuedToken": _obj(
        {
            "token": {"type": "string", "description": "A JWT for the user (`userToken`)."},
            "expires_at": {**TIME, "description": "When the token expires (its `exp`)."},
        }
    ),
    "NameInput": _closed(
        {"name": {"type": "string", "description": "Stripped; 1-128 printable characters."}}
    ),
    "AdminRoom": _obj({"id": UUID, "external_id": EXTERNAL_ID, "name": STRING, "created_at": TIME}),
    "AdminTopic": _obj(
        {
            "id": UUID,
            "external_id": EXTERNAL_ID,
            "room_id": UUID,
            "room_external_id": EXTERNAL_ID,
            "name": STRING,
            "created_at": TIME,
        }
    ),
    "Membership": _obj(
        {
            "topic_id": UUID,
            "topic_external_id": EXTERNAL_ID,
            "user_id": UUID,
            "user_external_id": EXTERNAL_ID,
            "joined_at": TIME,
        },
        description="A user's membership of a topic.",
    ),
    "PublishInput": _closed(
        {
            "topic": {**EXTERNAL_ID, "description": "The topic's external id."},
            "sender": {**EXTERNAL_ID, "description": "The sender's external id."},
            "message": {
                "type": "string",
                "minLength": 1,
                "description": "1..`MAX_MESSAGE_LENGTH` characters, not only whitespace.",
            },
            "idempotency_key": {
                "type": "string",
                "description": "1-255 printable characters; kept 24 hours.",
            },
        },
        optional=("idempotency_key",),
    ),
    "WebhookEvent": {"type": "string", "enum": list(EVENTS)},
    "WebhookInput": _closed(
        {
            "url": {
                "type": "string",
                "format": "uri",
                "maxLength": MAX_URL_LENGTH,
                "description": "https, on a public address (or a `WEBHOOK_ALLOWED_HOSTS` host).",
            },
            "events": {
                "type": "array",
                "items": _ref("WebhookEvent"),
                "minItems": 1,
                "uniqueItems": True,
            },
        }
    ),
    "WebhookUpdate": _closed(
        {
            "enabled": {
                "type": "boolean",
                "description": "true sends again (the failure count reset); false stops.",
            }
        }
    ),
    "Webhook": _obj(
        {
            "id": UUID,
            "url": STRING,
            "events": {"type": "array", "items": _ref("WebhookEvent")},
            "enabled": {"type": "boolean"},
            "created_at": TIME,
            "consecutive_failures": COUNT,
            "last_success_at": _or_null(TIME),
            "last_failure_at": _or_null(TIME),
            "last_error": {"type": ["string", "null"]},
            "disabled_at": {
                **_or_null(TIME),
                "description": "Set when disabled: by `PATCH`, or after "
                "`WEBHOOK_DISABLE_AFTER` failed deliveries in a row.",
            },
        },
        description="An outgoing webhook (its secret is shown once, when it is created).",
    ),
    "WebhookCreated": {
        "allOf": [
            _ref("Webhook"),
            _obj(
                {
                    "secret": {
                        "type": "string",
                        "pattern": "^whsec_",
                        "description": "The HMAC-SHA256 key of `Beacon-Signature`.",
                    }
                }
            ),
        ]
    },
}


def _json(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("Error"))


def _path_param(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


PAGE_PARAMS = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "Page size."),
    _query("before", ROW_ID, "Only rows older than this id (the previous `next_before`)."),
]
TOPIC_ID = _path_param("topic_id", UUID, "A topic id (else `400 invalid_topic_id`).")
ROOM_ID = _path_param("room_id", UUID, "A room id (else `400 invalid_room_id`).")

# Errors that follow from how a route authenticates (a user's token, or a service key of the
# scope "admin" or "publish") or from its having a body.
_KEY_ERRORS = {
    401: "`missing_key`, `invalid_key`",
    403: "`service_key_required` (a user's JWT was sent), `insufficient_scope`",
    429: "`rate_limited` (`RATE_LIMIT_ADMIN`, per key), with `retry_after`",
    503: "`unavailable`: the database or Redis is down",
}
_AUTH_ERRORS = {
    "user": {
        401: "`missing_token`, `invalid_token`, `token_expired`, `token_not_yet_valid`, "
        "`unknown_user`, `auth_unconfigured`",
        403: "`user_token_required`: a service key was sent",
        503: "`unavailable`: the database or Redis is down",
    },
    "admin": _KEY_ERRORS,
    "publish": _KEY_ERRORS,
}
_BODY_ERRORS = {
    400: "`invalid_payload` (not a JSON object, not UTF-8, nested too deep), `invalid_text`",
    413: "`request_entity_too_large`: the body is over 64 KiB",
}
# OpenAPI 3.1 lets a non-OAuth scheme list roles: here the key's scope (an admin key may do
# everything).
_SECURITY = {
    "user": [{"userToken": []}],
    "admin": [{"serviceKey": ["admin"]}],
    "publish": [{"serviceKey": ["publish"]}],
    None: [],
}
_RATE_LIMITED_HEADERS = {
    "Retry-After": {"schema": {"type": "integer"}, "description": "Whole seconds to wait."}
}


def _op(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    ok: dict[int, dict[str, Any]],
    auth: str | None = "user",
    params: list[dict[str, Any]] | None = None,
    body: Schema | None = None,
    body_required: bool = True,
    errors: dict[int, str] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """One operation: its success answers ``ok`` plus its refusals; ``errors`` (status to
    codes) come first, then those of its authentication and of having a body."""
    refusals: dict[int, list[str]] = {}
    for source in (errors or {}, _AUTH_ERRORS.get(auth or "", {}), _BODY_ERRORS if body else {}):
        for status, text in source.items():
            refusals.setdefault(status, []).append(text)
    responses: dict[str, Any] = {str(status): answer for status, answer in ok.items()}
    for status in sorted(refusals):
        answer = _error("; ".join(refusals[status]))
        if status == 429:
            answer["headers"] = _RATE_LIMITED_HEADERS
        responses[str(status)] = answer
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": _SECURITY[auth],
        "responses": responses,
    }
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
    return operation


NO_CONTENT = {204: {"description": "Done; no body."}}


def _user_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/topics": {
            "get": _op(
                "listTopics",
                "The caller's topics with unread counts, busiest first",
                tag="topics",
                ok={
                    200: _json(
                        "The topics",
                        _obj({"topics": {"type": "array", "items": _ref("TopicRow")}}),
                    )
                },
            )
        },
        "/api/topics/{topic_id}/messages": {
            "get": _op(
                "listTopicMessages",
                "A page of a topic's messages, newest first",
                tag="topics",
                params=[TOPIC_ID, *PAGE_PARAMS],
                ok={200: _json("A page", _ref("MessagePage"))},
                errors={
                    400: "`invalid_topic_id`, `invalid_limit`, `invalid_before`",
                    403: "`not_a_member`",
                    404: "`topic_not_found`",
                },
            )
        },
        "/api/topics/{topic_id}/unread": {
            "post": _op(
                "markAsUnread",
                "Mark a topic unread from a message on (the socket's `mark_as_unread`)",
                tag="topics",
                description=(
                    "The read marker becomes `message_id - 1`, backwards or forwards; the unread "
                    "count is then the topic's messages from `message_id` on not sent by the "
                    "caller. Every device of the caller gets `unread_update` and "
                    "`messages_read`; the other members who share read receipts get "
                    "`messages_read` too when the caller shares them."
                ),
                params=[TOPIC_ID],
                body=_ref("UnreadInput"),
                ok={200: _json("The caller's state in the topic after it", _ref("ReadState"))},
                errors={
                    400: "`invalid_topic_id`, `invalid_message_id` (not a positive integer), "
                    "`unknown_field`",
                    403: "`not_a_member`",
                    404: "`topic_not_found`, `message_not_found` (not a message of the topic)",
                    429: "`rate_limited` (`RATE_LIMIT_MARK_AS_UNREAD`, per user, shared with "
                    "`mark_as_unread`), with `retry_after`",
                },
            )
        },
        "/api/topics/{topic_id}/receipts": {
            "get": _op(
                "listReadReceipts",
                "The read markers of the topic's other members who share them",
                tag="topics",
                description=(
                    "Only members who share read receipts and have read something, newest "
                    "marker first. `enabled` is false, with no rows, when the server's "
                    "`READ_RECEIPTS` is off or the caller does not share their own."
                ),
                params=[
                    TOPIC_ID,
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        "At most this many rows.",
                    ),
                ],
                ok={200: _json("The receipts", _ref("Receipts"))},
                errors={
                    400: "`invalid_topic_id`, `invalid_limit`",
                    403: "`not_a_member`",
                    404: "`topic_not_found`",
                },
            )
        },
        "/api/sync": {
            "get": _op(
                "sync",
                "Catch up after a reconnect: every topic with what is new (the socket's `sync`)",
                tag="topics",
                description=(
                    "Connect (and join the open topic) first, then sync: anything committed "
                    "after the snapshot arrives as a live event. A topic with `has_more` is "
                    "paged with `GET /api/topics/{topic_id}/messages?before=<next_before>` "
                    "until the ids reach `since`; merge messages by id (one may come both here "
                    "and live). Keep, per topic and user, the state with the highest `version`."
                ),
                params=[
                    _query(
                        "since",
                        {"type": "integer", "minimum": 0, "maximum": MAX_BIGINT},
                        "The previous answer's `cursor`: only messages with a greater id come "
                        "(left out or 0: from the first, the newest kept within the limits).",
                    )
                ],
                ok={200: _json("The snapshot", _ref("Sync"))},
                errors={
                    400: "`invalid_since`: not an integer >= 0",
                    429: "`rate_limited` (`RATE_LIMIT_SYNC`, per user, shared with `sync`), "
                    "with `retry_after`",
                },
            )
        },
        "/api/users/me": {
            "get": _op(
                "getMe",
                "The caller's status",
                tag="users",
                ok={200: _json("The caller", _ref("UserStatus"))},
            )
        },
        "/api/users/online": {
            "get": _op(
                "listOnlineUsers",
                "Users with a live connection now (on any web process)",
                tag="users",
                ok={
                    200: _json(
                        "Online users",
                        _obj({"users": {"type": "array", "items": _ref("UserStatus")}}),
                    )
                },
            )
        },
        **_notification_paths(),
    }


def _notification_paths() -> dict[str, dict[str, Any]]:
    subscription_id = _path_param(
        "subscription_id", STRING, "One of the caller's subscription ids (anything else is 404)."
    )
    level_set = "The override is set and announced as `preferences_updated`."
    return {
        "/api/notifications/vapid-public-key": {
            "get": _op(
                "getVapidPublicKey",
                "The `applicationServerKey` for `pushManager.subscribe`",
                tag="notifications",
                auth=None,
                ok={200: _json("The key", _obj({"public_key": STRING}))},
                errors={503: "`push_disabled`: no VAPID keys are configured"},
            )
        },
        "/api/notifications/subscribe": {
            "post": _op(
                "subscribe",
                "Store the browser's push subscription for the caller",
                tag="notifications",
                description=(
                    "Upserts by endpoint. An endpoint another account registered moves to the "
                    "caller only if the keys are the same (the same browser signing in as "
                    "someone else)."
                ),
                body=_ref("PushSubscriptionJSON"),
                ok={
                    201: _json("A new subscription", _ref("Subscription")),
                    200: _json("An existing subscription, updated", _ref("Subscription")),
                },
                errors={
                    400: "`invalid_subscription`, `invalid_endpoint`, `insecure_endpoint` (not "
                    "https), `forbidden_host` (an internal address), `invalid_keys`, "
                    "`invalid_p256dh`, `invalid_auth`, `invalid_label`",
                    409: "`endpoint_in_use`, `too_many_subscriptions`",
                    429: "`rate_limited` (`RATE_LIMIT_SUBSCRIBE`), with `retry_after`",
                },
            )
        },
        "/api/notifications/devices": {
            "post": _op(
                "registerDevice",
                "Store a mobile app's FCM or APNs token for the caller",
                tag="notifications",
                description=(
                    "Upserts by token. A token another account registered moves to the caller "
                    "(only the app on that device has it: it signed in as someone else); the "
                    "previous owner's integration gets `device.removed`."
                ),
                body=_ref("DeviceRegistration"),
                ok={
                    201: _json("A new device", _ref("Device")),
                    200: _json("An existing device of the caller, updated", _ref("Device")),
                },
                errors={
                    400: "`invalid_platform`, `invalid_token`, `invalid_app_id`, `invalid_label`",
                    409: "`too_many_subscriptions` (`PUSH_MAX_SUBSCRIPTIONS`, all kinds)",
                    429: "`rate_limited` (`RATE_LIMIT_SUBSCRIBE`), with `retry_after`",
                    503: "`push_disabled`: that platform is not configured",
                },
            )
        },
        "/api/notifications/devices/{device_id}": {
            "delete": _op(
                "deleteDevice",
                "Delete one of the caller's devices (any kind)",
                tag="notifications",
                params=[
                    _path_param(
                        "device_id", STRING, "One of the caller's device or subscription ids."
                    )
                ],
                ok=NO_CONTENT,
                errors={404: "`subscription_not_found` (someone else's id too)"},
            )
        },
        "/api/notifications/subscriptions": {
            "get": _op(
                "listSubscriptions",
                "The caller's push subscriptions and mobile devices, each with its `type`",
                tag="notifications",
                ok={
                    200: _json(
                        "The devices",
                        _obj(
                            {
                                "subscriptions": {
                                    "type": "array",
                                    "items": {"oneOf": [_ref("Subscription"), _ref("Device")]},
                                }
                            }
                        ),
                    )
                },
            )
        },
        "/api/notifications/unsubscribe/{subscription_id}": {
            "delete": _op(
                "unsubscribe",
                "Delete one of the caller's push subscriptions",
                tag="notifications",
                params=[subscription_id],
                ok=NO_CONTENT,
                errors={404: "`subscription_not_found` (someone else's id too)"},
            )
        },
        "/api/notifications/unsubscribe-by-endpoint": {
            "delete": _op(
                "unsubscribeByEndpoint",
                "Delete the caller's subscription of an endpoint (what a service worker calls)",
                tag="notifications",
                body=_obj({"endpoint": {"type": "string", "minLength": 1, "maxLength": 2048}}),
                ok=NO_CONTENT,
                errors={400: "`invalid_endpoint`", 404: "`subscription_not_found`"},
            )
        },
        "/api/notifications/preferences": {
            "get": _op(
                "getPreferences",
                "The caller's push preferences and overrides",
                tag="notifications",
                ok={200: _json("The preferences", _ref("Preferences"))},
            ),
            "patch": _op(
                "updatePreferences",
                "Change any of the caller's user-wide push settings",
                tag="notifications",
                body=_ref("PreferencesUpdate"),
                ok={200: _json("The preferences after the change", _ref("Preferences"))},
                errors={
                    400: "`unknown_field`, `invalid_level`, `invalid_quiet_hours`, "
                    "`invalid_time_zone`, `invalid_snooze`, `invalid_dnd_allow_mentions`, "
                    "`invalid_push_when_idle`, `invalid_email_level`, `invalid_email_delay`, "
                    "`invalid_share_read_receipts`"
                },
            ),
        },
        "/api/notifications/preferences/topics/{topic_id}": {
            "put": _op(
                "setTopicLevel",
                "Set the caller's push level for a topic",
                tag="notifications",
                params=[TOPIC_ID],
                body=_ref("LevelInput"),
                ok={200: _json(level_set, _ref("TopicLevel"))},
                errors={
                    400: "`invalid_topic_id`, `unknown_field`, `invalid_level`, "
                    "`invalid_email_level`",
                    403: "`not_a_member`",
                    404: "`topic_not_found`",
                },
            ),
            "delete": _op(
                "clearTopicLevel",
                "Remove the caller's override of a topic (it inherits again)",
                tag="notifications",
                params=[TOPIC_ID],
                ok=NO_CONTENT,
                errors={400: "`invalid_topic_id`"},
            ),
        },
        "/api/notifications/preferences/rooms/{room_id}": {
            "put": _op(
                "setRoomLevel",
                "Set the caller's push level for a room",
                tag="notifications",
                params=[ROOM_ID],
                body=_ref("LevelInput"),
                ok={200: _json(level_set, _ref("RoomLevel"))},
                errors={
                    400: "`invalid_room_id`, `unknown_field`, `invalid_level`, "
                    "`invalid_email_level`",
                    404: "`room_not_found`: the caller has no topic in the room",
                },
            ),
            "delete": _op(
                "clearRoomLevel",
                "Remove the caller's override of a room",
                tag="notifications",
                params=[ROOM_ID],
                ok=NO_CONTENT,
                errors={400: "`invalid_room_id`"},
            ),
        },
        "/api/notifications/history": {
            "get": _op(
                "listPushHistory",
                "The pushes sent to the caller and how each ended, newest first",
                tag="notifications",
                params=[
                    *PAGE_PARAMS,
                    _query(
                        "outcome",
                        OUTCOME,
                        "Only pushes that ended so.",
                    ),
                ],
                ok={200: _json("A page", _ref("PushHistoryPage"))},
                errors={400: "`invalid_limit`, `invalid_before`, `invalid_outcome`"},
            )
        },
        "/api/notifications/decisions": {
            "get": _op(
                "listNotificationDecisions",
                "Why each recent message of the caller's topics did or did not notify them",
                tag="notifications",
                description=(
                    "Only the caller's own decisions, for topics they are a member of now "
                    f"(the last {DECISIONS_KEPT} messages, at most `DECISIONS_DAYS` days), "
                    "newest message first. A held (`coalesced`) message is resolved to the push "
                    "that carried it, or to why none went; a push that failed on every device "
                    "is `failed`."
                ),
                params=[
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": DECISIONS_KEPT, "default": 50},
                        "Page size.",
                    ),
                    _query(
                        "before",
                        ROW_ID,
                        "Only messages older than this id (the previous `next_before`).",
                    ),
                    _query("topic_id", UUID, "Only this topic's (one of the caller's)."),
                ],
                ok={200: _json("A page", _ref("DecisionPage"))},
                errors={
                    400: "`invalid_limit`, `invalid_before`, `invalid_topic_id`",
                    403: "`not_a_member`: `topic_id` is not one of the caller's topics",
                    404: "`topic_not_found`",
                },
            )
        },
        "/api/notifications/test": {
            "post": _op(
                "sendTestNotification",
                "Send a test notification to every device of the caller at once",
                tag="notifications",
                description=(
                    "No body. Ignores presence, levels, do-not-disturb and coalescing; not "
                    "retried; a device the push service says is gone is deleted. Answers with "
                    "each device's outcome when they come within `TEST_PUSH_WAIT` seconds, "
                    "else 202; either way `test_push_result` goes to all the caller's "
                    "connections."
                ),
                ok={
                    200: _json("Each device's outcome", _ref("TestPushResult")),
                    202: _json("Still sending", _ref("TestPushPending")),
                },
                errors={
                    429: "`rate_limited` (`RATE_LIMIT_TEST_PUSH`, per user), with `retry_after`",
                    503: "`push_disabled`: no push channel is configured",
                },
            )
        },
    }


def _admin_paths() -> dict[str, dict[str, Any]]:
    def ext(name: str, what: str) -> dict[str, Any]:
        return _path_param(name, EXTERNAL_ID, f"The product's id of the {what}.")

    user = ext("external_id", "user")
    room = ext("external_id", "room")
    topic = ext("external_id", "topic")
    topic_room = ext("room_external_id", "room")
    member_topic = ext("topic_external_id", "topic")
    member_user = ext("user_external_id", "user")
    webhook_id = _path_param("webhook_id", UUID, "A webhook id.")
    bad_ext, bad_hook = "`invalid_external_id`", "`invalid_webhook_id`"

    def admin(operation_id: str, summary: str, **kw: Any) -> dict[str, Any]:
        return _op(operation_id, summary, tag="admin", auth="admin", **kw)

    def upsert(operation_id: str, what: str, schema: str, **kw: Any) -> dict[str, Any]:
        ok = {
            201: _json(f"The {what}, created", _ref(schema)),
            200: _json(f"The {what}, updated", _ref(schema)),
        }
        return admin(operation_id, f"Create or update a {what} by its external id", ok=ok, **kw)

    return {
        "/api/admin/users/{external_id}": {
            "put": upsert(
                "putUser",
                "user",
                "AdminUser",
                params=[user],
                body=_ref("AdminUserInput"),
                errors={
                    400: f"{bad_ext}, `unknown_field`, `missing_field`, `invalid_username`, "
                    "`invalid_display_name`, `invalid_email`",
                    409: "`username_taken`",
                },
            ),
            "get": admin(
                "getUser",
                "A user by its external id",
                params=[user],
                ok={200: _json("The user", _ref("AdminUser"))},
                errors={400: bad_ext, 404: "`user_not_found`"},
            ),
            "delete": admin(
                "deleteUser",
                "Delete a user",
                description=(
                    "Closes the user's connections (`access_revoked`) and erases what Beacon "
                    "holds about them; their messages stay, with a deleted sender. The "
                    "external id is free again."
                ),
                params=[user],
                ok=NO_CONTENT,
                errors={400: bad_ext, 404: "`user_not_found`"},
            ),
        },
        "/api/admin/users/{external_id}/token": {
            "post": admin(
                "issueUserToken",
                "Issue a JWT for a user, for the product to hand to its client",
                params=[user],
                body=_ref("TokenInput"),
                body_required=False,
                ok={200: _json("The token", _ref("IssuedToken"))},
                errors={
                    400: f"{bad_ext}, `unknown_field`, `invalid_ttl`",
                    404: "`user_not_found`",
                },
            )
        },
        "/api/admin/rooms/{external_id}": {
            "put": upsert(
                "putRoom",
                "room",
                "AdminRoom",
                params=[room],
                body=_ref("NameInput"),
                errors={400: f"{bad_ext}, `unknown_field`, `missing_field`, `invalid_name`"},
            ),
            "delete": admin(
                "deleteRoom",
                "Delete a room with its topics, their messages and memberships",
                params=[room],
                ok=NO_CONTENT,
                errors={400: bad_ext, 404: "`room_not_found`"},
            ),
        },
        "/api/admin/rooms/{room_external_id}/topics/{external_id}": {
            "put": upsert(
                "putTopic",
                "topic",
                "AdminTopic",
                params=[topic_room, topic],
                body=_ref("NameInput"),
                errors={
                    400: f"`invalid_room_external_id`, {bad_ext}, `unknown_field`, "
                    "`missing_field`, `invalid_name`",
                    404: "`room_not_found`",
                    409: "`topic_in_other_room`, `name_taken` (another topic of the room)",
                },
            ),
            "delete": admin(
                "deleteTopic",
                "Delete a topic with its messages and memberships",
                params=[topic_room, topic],
                ok=NO_CONTENT,
                errors={
                    400: f"`invalid_room_external_id`, {bad_ext}",
                    404: "`room_not_found`, `topic_not_found`",
                },
            ),
        },
        "/api/admin/topics/{topic_external_id}/members/{user_external_id}": {
            "put": admin(
                "putMember",
                "Make a user a member of a topic (their devices get `topic_added`)",
                params=[member_topic, member_user],
                ok={
                    201: _json("The membership, created", _ref("Membership")),
                    200: _json("The user was already a member", _ref("Membership")),
                },
                errors={
                    400: "`invalid_topic_external_id`, `invalid_user_external_id`",
                    404: "`topic_not_found`, `user_not_found`",
                },
            ),
            "delete": admin(
                "deleteMember",
                "End a membership at once (`topic_removed`); done too when there was none",
                params=[member_topic, member_user],
                ok=NO_CONTENT,
                errors={
                    400: "`invalid_topic_external_id`, `invalid_user_external_id`",
                    404: "`topic_not_found`, `user_not_found`",
                },
            ),
        },
        "/api/admin/messages": {
            "post": _op(
                "publishMessage",
                "Post a message as a member, delivered like one sent over Socket.IO",
                tag="admin",
                auth="publish",
                description=(
                    "With `idempotency_key`, a retry of the same request gets the first "
                    "message back (201, with `Idempotent-Replayed: true`), never a second one."
                ),
                body=_ref("PublishInput"),
                ok={
                    201: {
                        **_json(
                            "The message (posted now, or by the key's first request)",
                            _ref("Message"),
                        ),
                        "headers": {
                            "Idempotent-Replayed": {
                                "schema": {"type": "string", "const": "true"},
                                "description": "Present on a replay of an idempotency key.",
                            }
                        },
                    }
                },
                errors={
                    400: "`unknown_field`, `missing_field`, `invalid_topic`, `invalid_sender`, "
                    "`empty_message`, `message_too_long` (with `max_length`), `invalid_message`, "
                    "`invalid_idempotency_key`",
                    403: "`not_a_member`: the sender is not a member of the topic",
                    404: "`topic_not_found`, `user_not_found`",
                    409: "`idempotency_key_reused`: the key was used for a different request",
                },
            )
        },
        "/api/admin/webhooks": {
            "post": admin(
                "createWebhook",
                "Register an outgoing webhook",
                body=_ref("WebhookInput"),
                ok={201: _json("The webhook with its secret", _ref("WebhookCreated"))},
                errors={
                    400: "`unknown_field`, `missing_field`, `invalid_url`, `insecure_url` (not "
                    "https), `forbidden_host` (an internal address), `invalid_events`"
                },
            ),
            "get": admin(
                "listWebhooks",
                "The registered webhooks, oldest first",
                ok={
                    200: _json(
                        "The webhooks",
                        _obj({"webhooks": {"type": "array", "items": _ref("Webhook")}}),
                    )
                },
            ),
        },
        "/api/admin/webhooks/{webhook_id}": {
            "get": admin(
                "getWebhook",
                "A webhook",
                params=[webhook_id],
                ok={200: _json("The webhook", _ref("Webhook"))},
                errors={400: bad_hook, 404: "`webhook_not_found`"},
            ),
            "patch": admin(
                "setWebhookEnabled",
                "Enable or disable a webhook",
                params=[webhook_id],
                body=_ref("WebhookUpdate"),
                ok={200: _json("The webhook", _ref("Webhook"))},
                errors={
                    400: f"{bad_hook}, `unknown_field`, `invalid_enabled`",
                    404: "`webhook_not_found`",
                },
            ),
            "delete": admin(
                "deleteWebhook",
                "Delete a webhook (deliveries already enqueued for it are dropped)",
                params=[webhook_id],
                ok=NO_CONTENT,
                errors={400: bad_hook, 404: "`webhook_not_found`"},
            ),
        },
    }


def _service_paths() -> dict[str, dict[str, Any]]:
    dev = "Development only: `404 not_found` unless the server runs with `DEV_LOGIN=1`."
    text = {"type": "string"}

    def html(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"text/html": {"schema": text}}}

    unsubscribe_auth = "No sign-in: the signed `token` of the link is the credential."
    unsubscribe_token = {
        "name": "token",
        "in": "query",
        "required": True,
        "schema": text,
        "description": "The signed token of the email's link (else `400`, an HTML page).",
    }
    return {
        "/healthz": {
            "get": _op(
                "healthz",
                "Liveness: the process answers",
                tag="operations",
                auth=None,
                ok={200: _json("Alive", _obj({"status": {"type": "string", "const": "ok"}}))},
            )
        },
        "/readyz": {
            "get": _op(
                "readyz",
                "Readiness: the database and Redis both answer",
                tag="operations",
                auth=None,
                ok={
                    200: _json("Ready", _ref("Readiness")),
                    503: _json("Not ready: the failing check says why", _ref("Readiness")),
                },
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics of this process and the cluster (restrict it at the proxy)",
                tag="operations",
                auth=None,
                ok={
                    200: {
                        "description": "The Prometheus text exposition format (while Redis is "
                        "down, without the cluster's figures)",
                        "content": {"text/plain": {"schema": text}},
                    }
                },
            )
        },
        "/api/openapi.json": {
            "get": _op(
                "openapi",
                "This document",
                tag="operations",
                auth=None,
                ok={200: _json("OpenAPI 3.1", {"type": "object"})},
            )
        },
        "/": {
            "get": _op(
                "demoPage",
                "The browser demo page (`?room=<id>&topic=<id>` opens a topic)",
                tag="demo",
                auth=None,
                ok={200: {"description": "HTML", "content": {"text/html": {"schema": text}}}},
            )
        },
        "/sw.js": {
            "get": _op(
                "serviceWorker",
                "The demo's service worker, served from the root for the whole origin's scope",
                tag="demo",
                auth=None,
                ok={
                    200: {
                        "description": "JavaScript",
                        "content": {"text/javascript": {"schema": text}},
                    }
                },
            )
        },
        "/api/email/unsubscribe": {
            "get": _op(
                "emailUnsubscribePage",
                "The page an email's unsubscribe link opens: a button to confirm (changes nothing)",
                tag="email",
                auth=None,
                description=unsubscribe_auth
                + " A GET never unsubscribes: mail scanners and previews fetch links.",
                params=[unsubscribe_token],
                ok={200: html("Asks to confirm"), 400: html("The link is not valid")},
            ),
            "post": _op(
                "emailUnsubscribe",
                "Stop the token's user's missed-message emails (RFC 8058 one-click)",
                tag="email",
                auth=None,
                description=unsubscribe_auth
                + " Any body is taken and none is read (mail clients send `List-Unsubscribe="
                "One-Click`, the page's form its button). A user who no longer exists gets the "
                "same answer.",
                params=[unsubscribe_token],
                ok={200: html("The emails are off"), 400: html("The link is not valid")},
            ),
        },
        "/api/demo/emails": {
            "get": _op(
                "devEmails",
                "The caller's latest missed-message emails (development only)",
                tag="development",
                description=dev
                + " And `DEV_MAILBOX` set: read from that Maildir (a local SMTP sink's), "
                "addressed to the caller's email, newest first, at most 10.",
                ok={
                    200: _json(
                        "The emails",
                        _obj(
                            {
                                "emails": {"type": "array", "items": _ref("DevEmail")},
                                "address": _or_null(STRING),
                            }
                        ),
                    )
                },
                errors={404: "`not_found`: development login is off or there is no mailbox"},
            )
        },
        "/api/dev/users": {
            "get": _op(
                "devUsers",
                "Users to sign in as (development only)",
                tag="development",
                auth=None,
                description=dev + " At most 200 users, online and recently seen first.",
                params=[
                    _query(
                        "q", {"type": "string"}, "Filters by username or display name (64 chars)."
                    )
                ],
                ok={
                    200: _json(
                        "Users",
                        _obj(
                            {
                                "users": {"type": "array", "items": _ref("UserStatus")},
                                "truncated": {"type": "boolean"},
                            }
                        ),
                    )
                },
                errors={404: "`not_found`: development login is off", 503: "`unavailable`"},
            )
        },
        "/api/dev/token": {
            "post": _op(
                "devToken",
                "A token for any user, by username (development only)",
                tag="development",
                auth=None,
                description=dev,
                body=_closed({"username": {"type": "string", "minLength": 1, "maxLength": 64}}),
                ok={
                    200: _json(
                        "The token",
                        _obj(
                            {
                                "token": STRING,
                                "expires_in": {"type": "integer", "description": "Seconds."},
                                "user": _ref("UserStatus"),
                            }
                        ),
                    )
                },
                errors={
                    400: "`unknown_field`, `invalid_username`",
                    404: "`not_found` (development login is off), `user_not_found`",
                    503: "`unavailable`",
                },
            )
        },
    }


DESCRIPTION = """\
Beacon's REST API; docs/PROTOCOL.md describes it in prose, with the Socket.IO events.

All bodies are JSON. Every error is `{"error": code, "message": text}` (some codes add
fields). On every route, NUL in the query string is `400 invalid_text`; an unknown path is
`404 not_found`, a method the path does not take `405 method_not_allowed`.

User routes take a user's JWT (`userToken`); `/api/admin` routes, the integration API, take
a service key (`serviceKey`). Each refuses the other credential with 403.
"""


def build_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document, as a JSON-ready dict."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Beacon", "version": API_VERSION, "description": DESCRIPTION},
        "servers": [{"url": "/", "description": "This server"}],
        "tags": [
            {
                "name": "topics",
                "description": "The caller's topics, their messages, read state and catch-up",
            },
            {"name": "users", "description": "Who the caller is, who is online"},
            {
                "name": "notifications",
                "description": "Push: devices, preferences, history, decisions, a test push",
            },
            {"name": "admin", "description": "The integration API, for a product's backend"},
            {"name": "operations", "description": "Probes, metrics, this document"},
            {"name": "demo", "description": "The browser demo"},
            {"name": "email", "description": "Missed-message emails: their unsubscribe link"},
            {"name": "development", "description": "Development-only login (`DEV_LOGIN=1`)"},
        ],
        "paths": {**_user_paths(), **_admin_paths(), **_service_paths()},
        "components": {
            "securitySchemes": {
                "userToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A user's JWT: `sub` is the user id, `exp` is required.",
                },
                "serviceKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "bk_...",
                    "description": "A service key of the integration API (`flask beacon "
                    "create-api-key`), scope `admin` or `publish`.",
                },
            },
            "schemas": SCHEMAS,
        },
    }
