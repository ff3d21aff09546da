"""Browser push subscriptions: subscribe (upsert by endpoint), list, unsubscribe."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select

from webapp.delivery.channels.webpush.subscription import SubscriptionError, validate_subscription
from webapp.errors import BeaconError, InvalidInput, NotFound
from webapp.extensions import db
from webapp.models import PushSubscription, User, isoformat, utcnow
from webapp.platform import context, rate_limit
from webapp.platform.dialect import insert
from webapp.platform.validation import require_object

MAX_LABEL = 256


def subscription_payload(sub: PushSubscription) -> dict[str, Any]:
    """What the owner sees: enough to recognise a device, never the keys."""
    parts = urlsplit(sub.endpoint)
    return {
        "id": str(sub.id),
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
        owned = db.session.execute(
            select(func.count()).where(PushSubscription.user_id == user.id)
        ).scalar_one()
        if owned >= settings.push_max_subscriptions:
            raise BeaconError(
                "too_many_subscriptions",
                f"at most {settings.push_max_subscriptions} push subscriptions per user; "
                "remove one first",
                status=409,
            )
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
    """Delete one of the caller's subscriptions; anyone else's is 'not found'."""
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
