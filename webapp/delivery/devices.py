"""A user's devices: browsers' Web Push subscriptions (upsert by endpoint) and mobile apps'
FCM and APNs tokens (upsert by token); one list, one cap, delete by id.

A mobile token moves to whoever registers it: the push service gives it only to the app on
one device, so presenting it proves the same thing a browser's keys prove for Web Push (the
app signed in as someone else). The previous owner's integration hears ``device.removed``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select

from webapp.delivery.batch import publish_removed
from webapp.delivery.channels.webpush.subscription import SubscriptionError, validate_subscription
from webapp.errors import BeaconError, InvalidInput, NotFound
from webapp.extensions import db
from webapp.models import PushSubscription, User, isoformat, utcnow
from webapp.platform import context, rate_limit
from webapp.platform.dialect import insert
from webapp.platform.validation import require_object

MAX_LABEL = 256
# FCM registration tokens: base64url-ish with ':' (about 160 chars today, no documented bound);
# APNs device tokens: hex (32 bytes today; Apple says the length may grow).
_TOKEN_SHAPES = {
    "fcm": (re.compile(r"[A-Za-z0-9_:\-]{32,4096}"), "32 to 4096 of letters, digits, _ : -"),
    "apns": (re.compile(r"(?:[0-9a-fA-F]{2}){32,100}"), "64 to 200 hexadecimal digits"),
}
_APP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")


@dataclass(frozen=True)
class DeviceRegistration:
    """A mobile app's registration, parsed: ``platform`` ``fcm`` or ``apns``, its token
    (APNs tokens lower-cased), the app's package or bundle id, a label for the user."""

    platform: str
    token: str
    app_id: str | None
    label: str | None


def _label(raw: Any) -> str | None:
    if raw is not None and (not isinstance(raw, str) or len(raw) > MAX_LABEL):
        raise InvalidInput("invalid_label", f"label must be a string of at most {MAX_LABEL} chars")
    if not raw:
        return None
    return "".join(c for c in raw if c.isprintable()) or None


def parse_device(payload: Any) -> DeviceRegistration:
    """``{platform, token, app_id?, label?}`` from a request body."""
    data = require_object(payload)
    platform = data.get("platform")
    if platform not in _TOKEN_SHAPES:
        raise InvalidInput("invalid_platform", "platform must be fcm or apns")
    shape, described = _TOKEN_SHAPES[platform]
    token = data.get("token")
    if not isinstance(token, str) or not shape.fullmatch(token):
        raise InvalidInput("invalid_token", f"a {platform} token is {described}")
    app_id = data.get("app_id")
    if app_id is not None and (not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id)):
        raise InvalidInput(
            "invalid_app_id", "app_id is 1-128 of letters, digits, . _ - (a package or bundle id)"
        )
    if platform == "apns":
        token = token.lower()
    return DeviceRegistration(platform, token, app_id, _label(data.get("label")))


def subscription_payload(sub: PushSubscription) -> dict[str, Any]:
    """What the owner sees: enough to recognise a device, never the keys or the whole
    token."""
    if sub.channel != "webpush":
        return {
            "id": str(sub.id),
            "type": sub.channel,
            "app_id": sub.app_id,
            "label": sub.user_agent,
            "token_hint": f"…{(sub.token or '')[-8:]}",
            "created_at": isoformat(sub.created_at),
            "last_success_at": isoformat(sub.last_success_at),
            "failure_count": sub.failure_count,
        }
    parts = urlsplit(sub.endpoint or "")
    return {
        "id": str(sub.id),
        "type": "webpush",
        "endpoint": sub.endpoint,
        "push_service": f"{parts.scheme}://{parts.netloc}",
        "user_agent": sub.user_agent,
        "created_at": isoformat(sub.created_at),
        "last_success_at": isoformat(sub.last_success_at),
        "failure_count": sub.failure_count,
    }


def subscribe(user: User, payload: Any, user_agent: str | None) -> tuple[dict[str, Any], bool]:
    """Store the browser's PushSubscription for the caller; True when it is new.

    The endpoint identifies a browser: if it was registered by another account (a shared
    computer), it moves to the caller, with its new keys and a clean failure record.
    """
    settings = context.settings()
    data = require_object(payload)
    label = data.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
        raise InvalidInput("invalid_label", f"label must be a string of at most {MAX_LABEL} chars")
    subscription = {k: v for k, v in data.items() if k != "label"}
    try:
        keys = validate_subscription(subscription, settings.push_allowed_hosts)
    except SubscriptionError as exc:
        raise InvalidInput(exc.code, exc.message) from None

    rate_limit.check("subscribe", user.id, settings.rate_limit_subscribe)

    existing = db.session.execute(
        select(PushSubscription).where(PushSubscription.endpoint == keys.endpoint)
    ).scalar_one_or_none()
    if (
        existing is not None
        and existing.user_id != user.id
        and (existing.p256dh, existing.auth) != (keys.p256dh, keys.auth)
    ):
        # The same browser signing in as someone else sends the same keys. Knowing only the
        # endpoint URL is not enough to take another user's pushes away.
        raise BeaconError(
            "endpoint_in_use",
            "this endpoint belongs to another account's subscription",
            status=409,
        )
    if existing is None or existing.user_id != user.id:
        _check_cap(user)
    device = "".join(c for c in (label or user_agent or "") if c.isprintable())[:MAX_LABEL] or None
    values = {
        "user_id": user.id,
        "p256dh": keys.p256dh,
        "auth": keys.auth,
        "user_agent": device,
        "failure_count": 0,
        "last_failure_at": None,
    }
    stmt = insert(PushSubscription).values(
        id=uuid.uuid4(), endpoint=keys.endpoint, created_at=utcnow(), **values
    )
    stmt = stmt.on_conflict_do_update(index_elements=["endpoint"], set_=values)
    db.session.execute(stmt)
    db.session.commit()
    stored = db.session.execute(
        select(PushSubscription).where(PushSubscription.endpoint == keys.endpoint)
    ).scalar_one()
    return subscription_payload(stored), existing is None


def _check_cap(user: User) -> None:
    """One cap for every kind of device a user has."""
    cap = context.settings().push_max_subscriptions
    owned = db.session.execute(
        select(func.count()).where(PushSubscription.user_id == user.id)
    ).scalar_one()
    if owned >= cap:
        raise BeaconError(
            "too_many_subscriptions",
            f"at most {cap} devices (push subscriptions and mobile devices) per user; "
            "remove one first",
            status=409,
        )


def register_device(user: User, reg: DeviceRegistration) -> tuple[dict[str, Any], bool]:
    """Store the mobile app's token for the caller; True when it is new to the caller (a
    token another account had moves here, see the module's docstring)."""
    settings = context.settings()
    if reg.platform not in settings.push_channels:
        raise BeaconError(
            "push_disabled", f"{reg.platform} push is not configured on this server", status=503
        )
    rate_limit.check("subscribe", user.id, settings.rate_limit_subscribe)
    existing = db.session.execute(
        select(PushSubscription).where(
            PushSubscription.channel == reg.platform, PushSubscription.token == reg.token
        )
    ).scalar_one_or_none()
    previous = None
    if existing is None or existing.user_id != user.id:
        _check_cap(user)
        if existing is not None:
            previous = (existing.id, existing.user_id)
    values = {
        "user_id": user.id,
        "app_id": reg.app_id,
        "user_agent": reg.label,
        "failure_count": 0,
        "last_failure_at": None,
    }
    if previous is not None:  # the old owner's device is gone; the caller's is a new one
        db.session.execute(delete(PushSubscription).where(PushSubscription.id == previous[0]))
    stmt = insert(PushSubscription).values(
        id=uuid.uuid4(), channel=reg.platform, token=reg.token, created_at=utcnow(), **values
    )
    stmt = stmt.on_conflict_do_update(index_elements=["channel", "token"], set_=values)
    db.session.execute(stmt)
    db.session.commit()
    stored = db.session.execute(
        select(PushSubscription).where(
            PushSubscription.channel == reg.platform, PushSubscription.token == reg.token
        )
    ).scalar_one()
    if previous is not None:
        _announce_moved(*previous)
    return subscription_payload(stored), existing is None or previous is not None


def _announce_moved(device_id: uuid.UUID, owner_id: uuid.UUID) -> None:
    external_id = db.session.scalar(select(User.external_id).where(User.id == owner_id))
    db.session.rollback()
    publish_removed([(device_id, owner_id, external_id)], "registered by another user")


def list_for(user: User) -> list[dict[str, Any]]:
    rows = db.session.execute(
        select(PushSubscription)
        .where(PushSubscription.user_id == user.id)
        .order_by(PushSubscription.created_at)
    ).scalars()
    return [subscription_payload(s) for s in rows]


def _delete_own(user: User, which: Any) -> None:
    """Delete the caller's subscription matching ``which``; anyone else's is 'not found'."""
    deleted = db.session.execute(
        delete(PushSubscription).where(which, PushSubscription.user_id == user.id)
    ).rowcount
    db.session.commit()
    if not deleted:
        raise NotFound("subscription_not_found", "no such subscription")


def unsubscribe(user: User, subscription_id: str) -> None:
    """Delete one of the caller's devices (of any kind); anyone else's is 'not found'."""
    try:
        sub_id = uuid.UUID(subscription_id)
    except ValueError:
        raise NotFound("subscription_not_found", "no such subscription") from None
    _delete_own(user, PushSubscription.id == sub_id)


def unsubscribe_by_endpoint(user: User, payload: Any) -> None:
    """What a service worker calls when the browser drops its subscription."""
    data = require_object(payload)
    endpoint = data.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > 2048:
        raise InvalidInput("invalid_endpoint", "endpoint must be the subscription's URL")
    _delete_own(user, PushSubscription.endpoint == endpoint)
