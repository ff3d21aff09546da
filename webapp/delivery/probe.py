"""A test notification ("Send a test notification"): every device of a user at once.

Ignores presence, levels, do-not-disturb and coalescing: it answers "can this device be
reached at all". The web tier enqueues the send (queue ``push``) and waits up to
``TEST_PUSH_WAIT`` seconds for the worker's result on a Redis list; past that it answers
``202`` with the job id, and the result arrives as ``test_push_result`` on the caller's
sockets (it always does). No retries: a transient failure is reported as one. A device the
push service says is gone is deleted, as after any push.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from sqlalchemy import and_, delete, or_, select

from webapp import realtime
from webapp.delivery import channels
from webapp.delivery.batch import devices_of, publish_removed
from webapp.delivery.channels.base import Item, Notification, Outcome
from webapp.delivery.history import push_service
from webapp.extensions import db
from webapp.models import PushSubscription, User
from webapp.platform import context
from webapp.redis_client import get_redis

log = logging.getLogger(__name__)

RESULT_PREFIX = "beacon:testpush:"
RESULT_TTL = 300


def result_key(job_id: str) -> str:
    return f"{RESULT_PREFIX}{job_id}"


def wait(job_id: str, seconds: float) -> dict[str, Any] | None:
    """The job's result, if the worker gives it within ``seconds``."""
    found = get_redis(context.settings().redis_url).blpop([result_key(job_id)], timeout=seconds)
    return None if found is None else json.loads(found[1])


def send(user_id: uuid.UUID, job_id: str) -> dict[str, Any]:
    """The worker's side: send, report on the Redis list and to the user's sockets."""
    settings = context.settings()
    user = db.session.get(User, user_id)
    devices = devices_of(user_id, settings.push_channels) if user is not None else {}
    labels = dict(
        db.session.execute(
            select(PushSubscription.id, PushSubscription.user_agent).where(
                PushSubscription.user_id == user_id
            )
        ).all()
    )
    db.session.rollback()  # no transaction open across the requests
    note = Notification(
        payload={
            "type": "test",
            "title": "Test notification",
            "body": "Notifications from Beacon reach this device.",
            "count": 1,
            "url": settings.app_base_url or "/",
        },
        urgency="high",
        collapse_key="beacon-test",
    )
    by_channel: dict[str, list[str]] = {}
    for device_id, device in devices.items():
        by_channel.setdefault(device.channel, []).append(device_id)
    outcomes: dict[str, Outcome] = {}
    for name, ids in by_channel.items():
        items = [Item(address=devices[i].address(), notification=note) for i in ids]
        try:
            sent = channels.get(name).send(items)
        except (RuntimeError, OSError, ValueError) as exc:
            log.error("test push: channel %s cannot send: %s", name, exc)
            sent = [Outcome(None, "rejected", None, f"{name} is not configured correctly")] * len(
                ids
            )
        outcomes.update(zip(ids, sent, strict=True))
    _remove_expired(user, devices, [i for i, o in outcomes.items() if o.kind == "expired"])
    result = {
        "job_id": job_id,
        "done": True,
        "deliveries": [
            {
                "device_id": device_id,
                "channel": devices[device_id].channel,
                "device_label": labels.get(uuid.UUID(device_id)),
                "push_service": push_service(
                    devices[device_id].channel, devices[device_id].endpoint
                ),
                "outcome": _outcome(outcome),
                "status": outcome.status,
                "reason": outcome.reason or None,
            }
            for device_id, outcome in outcomes.items()
        ],
    }
    client = get_redis(settings.redis_url)
    pipe = client.pipeline(transaction=False)
    pipe.rpush(result_key(job_id), json.dumps(result))
    pipe.expire(result_key(job_id), RESULT_TTL)
    pipe.execute()
    realtime.emit(settings.redis_url, "test_push_result", result, to=realtime.user_room(user_id))
    return result


def _outcome(outcome: Outcome) -> str:
    if outcome.kind == "delivered":
        return "delivered"
    if outcome.kind == "expired":
        return "expired"
    return "failed"


def _remove_expired(user: User | None, devices: dict[str, Any], expired: list[str]) -> None:
    if user is None or not expired:
        return
    gone = list(
        db.session.execute(
            delete(PushSubscription)
            .where(
                or_(
                    *(
                        and_(PushSubscription.id == uuid.UUID(i), devices[i].sent_to())
                        for i in expired
                    )
                )
            )
            .returning(PushSubscription.id)
        ).scalars()
    )
    db.session.commit()
    publish_removed([(device_id, user.id, user.external_id) for device_id in gone], "expired")
