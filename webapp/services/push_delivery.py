"""Web Push for new messages: who gets one (fan-out), and what one send does to the database.

Fan-out picks the members who are not the sender and have no live connection, whose
preferences and do-not-disturb allow the push (notification_rules), and plans one push per
subscription, now or coalesced into a later one (push_coalescing); ``@username`` turns a
member's push into a ``mention`` (Urgency high).
Each send is recorded under ``push:<message>:<subscription>`` when delivered, so a redelivered
task does not notify twice; an expired subscription is deleted by id *and* the keys it was
sent with, so a browser that re-subscribed meanwhile keeps its fresh row.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import and_, delete, select, update

from webapp import metrics
from webapp.extensions import db
from webapp.models import Message, PushSubscription, TopicMember, User, utcnow
from webapp.redis_client import get_redis
from webapp.services import context, notification_rules, push_coalescing, push_history
from webapp.services.idempotency import claim, is_claimed
from webapp.services.messages import preview
from webapp.services.push_sender import PushResult, PushSender, SubscriptionKeys
from webapp.services.push_validation import SubscriptionError, check_endpoint_target

log = logging.getLogger(__name__)

MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_.\-]{1,64})")

_sender: PushSender | None = None
_sender_lock = threading.Lock()


def sender() -> PushSender:
    """This process's one sender (pooled connections, cached VAPID JWTs)."""
    global _sender
    if _sender is None:
        with _sender_lock:
            if _sender is None:
                s = context.settings()
                if not s.push_enabled:
                    raise RuntimeError("Web Push is disabled: no VAPID key pair configured")
                # allowed_hosts also checks the address each new connection really reached
                # (DNS rebinding between the send-time check and the connect).
                _sender = PushSender(
                    s.vapid_private_key,
                    s.vapid_subject,
                    timeout=s.push_request_timeout,
                    allowed_hosts=s.push_allowed_hosts,
                )
    return _sender


def mentioned_usernames(body: str) -> set[str]:
    return {m.lower().rstrip(".") for m in MENTION.findall(body)}


@dataclass(frozen=True)
class PushJob:
    subscription_id: str
    message_id: int
    payload: dict[str, Any]
    urgency: str
    topic: str
    # The push that ends a coalescing window: it stands for several messages, the newest being
    # message_id, which may also have had a push of its own (a mention sent at once).
    summary: bool = False

    @property
    def marker(self) -> str:
        """The processed-event key recorded when this push is delivered (sent at most once)."""
        return send_marker("push", self.message_id, self.subscription_id, self.summary)

    @property
    def failed_marker(self) -> str:
        """The key recorded when this push failed for good (reconciliation skips it)."""
        return send_marker("pushfailed", self.message_id, self.subscription_id, self.summary)


def send_marker(kind: str, message_id: int, sub_id: str, summary: bool = False) -> str:
    """``push:<message>:<subscription>`` (delivered) or ``pushfailed:…`` (failed for good),
    with ``:summary`` for the push that ends a coalescing window."""
    key = f"{kind}:{message_id}:{sub_id}"
    return f"{key}:summary" if summary else key


@dataclass(frozen=True)
class FanoutPlan:
    """The sends to enqueue now, and the flushes (user, topic, delay in seconds) to enqueue
    for the pushes that coalescing held back."""

    jobs: list[PushJob] = field(default_factory=list)
    flushes: list[tuple[str, str, float]] = field(default_factory=list)


def push_payload(
    message: Message,
    sender_user: User,
    kind: str,
    count: int = 1,
    *,
    summary: bool | None = None,
) -> dict[str, Any]:
    """The notification for ``message``; ``count`` > 1 stands for that many messages in its
    topic, the newest being ``message``. A ``summary`` (the default for a coalesced plain
    message, always for a window's flush) is titled with the count instead of the sender, who
    is not necessarily the one who mentioned the user."""
    topic = message.topic
    if summary is None:
        summary = count > 1 and kind == "message"
    if summary:
        title = f"{count} new messages in {topic.name}"
        body = preview(f"{sender_user.name}: {message.body}")
    elif kind == "mention":
        title = f"{sender_user.name} mentioned you in {topic.name}"
        body = preview(message.body)
    else:
        title = f"{sender_user.name} in {topic.name}"
        body = preview(message.body)
    base = context.settings().app_base_url.rstrip("/")
    return {
        "type": kind,
        "title": title,
        "body": body,
        "count": count,
        "topic_id": str(topic.id),
        "room_id": str(topic.channel_id),
        "message_id": message.id,
        "url": f"{base}/?room={topic.channel_id}&topic={topic.id}",
    }


def _now_ms() -> int:
    return int(time.time() * 1000)


def plan_fanout(message_id: int, *, replan: bool = False) -> FanoutPlan:
    """Who gets a push for this message, now or in a later coalesced one.

    Offline members other than the sender with at least one subscription, whose preferences
    and do-not-disturb allow it (notification_rules), then coalescing decides per member.
    ``replan`` (reconciliation after Redis lost its queues) plans a message again although
    its fan-out already ran, leaving out the sends that already ended (delivered or failed for
    good) and the subscriptions made after the message.
    """
    message = db.session.get(Message, message_id)
    if message is None:
        return FanoutPlan()
    if not replan and is_claimed(f"fanout:{message_id}"):
        log.info("push fan-out of message %s skipped: already done", message_id)
        return FanoutPlan()
    rows = db.session.execute(
        select(User.id, User.username)
        .join(TopicMember, TopicMember.user_id == User.id)
        .where(TopicMember.topic_id == message.topic_id, User.id != message.sender_id)
    ).all()
    members = {str(uid): username for uid, username in rows}
    online = context.presence().online_among(list(members))
    offline = [uuid.UUID(uid) for uid in members if uid not in online]
    subs_of: dict[uuid.UUID, list[str]] = {}
    if offline:
        query = select(PushSubscription.id, PushSubscription.user_id).where(
            PushSubscription.user_id.in_(offline)
        )
        if replan:
            query = query.where(PushSubscription.created_at <= message.created_at)
        for sub_id, user_id in db.session.execute(query).all():
            if not (replan and _send_ended(message.id, str(sub_id))):
                subs_of.setdefault(user_id, []).append(str(sub_id))

    mentioned = mentioned_usernames(message.body)
    is_mention = {uid: members[str(uid)].lower() in mentioned for uid in subs_of}
    rules = notification_rules.rules_for(list(subs_of), message.topic)
    now = utcnow()
    wanted = [
        (uid, is_mention[uid])
        for uid in subs_of
        if rules.get(uid, notification_rules.DEFAULT).allows(mentioned=is_mention[uid], now=now)
    ]
    offers = push_coalescing.offer(message.id, message.topic_id, wanted, _now_ms())

    plan = FanoutPlan()
    payloads: dict[tuple[str, int], dict[str, Any]] = {}
    for uid, offer in offers.items():
        if offer.flush_in is not None:
            plan.flushes.append((str(uid), str(message.topic_id), offer.flush_in))
        if not offer.send:
            continue
        kind = "mention" if is_mention[uid] else "message"
        if (kind, offer.count) not in payloads:
            payloads[kind, offer.count] = push_payload(message, message.sender, kind, offer.count)
        plan.jobs.extend(
            _job(sub_id, message, payloads[kind, offer.count]) for sub_id in subs_of[uid]
        )
    silenced = len(subs_of) - len(wanted)
    held = sum(1 for o in offers.values() if not o.send)
    metrics.record_push_decisions(
        get_redis(context.settings().redis_url),
        {"sent": len(offers) - held, "silenced": silenced, "held": held},
    )
    log.info(
        "push fan-out message=%s offline_members=%d silenced=%d held=%d subscriptions=%d",
        message_id,
        len(offline),
        silenced,
        held,
        len(plan.jobs),
    )
    return plan


def _job(
    sub_id: str, message: Message, payload: dict[str, Any], *, summary: bool = False
) -> PushJob:
    return PushJob(
        subscription_id=sub_id,
        message_id=message.id,
        payload=payload,
        urgency="high" if payload["type"] == "mention" else "normal",
        topic=str(message.topic_id),
        summary=summary,
    )


def plan_flush(user_id: str, topic_id: str) -> list[PushJob]:
    """The one push for what a coalescing window held, unless the user caught up meanwhile
    (came online, read the topic) or their rules now say no."""
    held = push_coalescing.take(user_id, topic_id, _now_ms())
    if held is None:
        log.info("push flush user=%s topic=%s: nothing held", user_id, topic_id)
        return []
    message = db.session.get(Message, held.last_message_id)
    uid = uuid.UUID(user_id)
    member = db.session.execute(
        select(TopicMember).where(
            TopicMember.topic_id == uuid.UUID(topic_id), TopicMember.user_id == uid
        )
    ).scalar_one_or_none()
    skip = None
    if message is None or member is None:
        skip = "the message or the membership is gone"
    elif context.presence().online_among([user_id]):
        skip = "the user is online"
    elif (member.last_read_message_id or 0) >= message.id:
        skip = "the user read the topic"
    elif (
        not notification_rules.rules_for([uid], message.topic)
        .get(uid, notification_rules.DEFAULT)
        .allows(mentioned=held.mentioned, now=utcnow())
    ):
        skip = "the user's preferences or do-not-disturb"
    redis_client = get_redis(context.settings().redis_url)
    if skip is not None:
        push_coalescing.reset(user_id, topic_id)
        metrics.record_push_decisions(redis_client, {"flush_skipped": 1})
        log.info("push flush user=%s topic=%s skipped: %s", user_id, topic_id, skip)
        return []
    metrics.record_push_decisions(redis_client, {"flushed": 1})
    kind = "mention" if held.mentioned else "message"
    payload = push_payload(message, message.sender, kind, held.count, summary=True)
    sub_ids = db.session.execute(
        select(PushSubscription.id).where(PushSubscription.user_id == uid)
    ).scalars()
    jobs = [_job(str(sub_id), message, payload, summary=True) for sub_id in sub_ids]
    log.info(
        "push flush user=%s topic=%s messages=%d subscriptions=%d",
        user_id,
        topic_id,
        held.count,
        len(jobs),
    )
    return jobs


def _send_ended(message_id: int, sub_id: str) -> bool:
    return is_claimed(send_marker("push", message_id, sub_id)) or is_claimed(
        send_marker("pushfailed", message_id, sub_id)
    )


def mark_fanned_out(message_id: int) -> None:
    """Record that a message's pushes are planned and enqueued (reconciliation looks for it)."""
    claim(f"fanout:{message_id}")
    db.session.commit()


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _acquire_lease(key: str) -> str | None:
    """A short Redis lease on one (message, subscription) send, so that two copies of the same
    task (a fan-out redelivered after its worker died) never post at once. Fails open: when
    Redis cannot answer, sending twice is better than not at all. None: someone holds it."""
    settings = context.settings()
    token = uuid.uuid4().hex
    ttl = min(settings.push_request_timeout + 5, settings.broker_visibility_timeout / 2)
    try:
        acquired = get_redis(settings.redis_url).set(
            f"beacon:push:lease:{key}", token, nx=True, px=int(ttl * 1000)
        )
    except redis.RedisError:
        log.warning("push lease unavailable (Redis); sending without it", exc_info=True)
        return token
    return token if acquired else None


def _release_lease(key: str, token: str) -> None:
    try:
        client = get_redis(context.settings().redis_url)
        client.eval(_RELEASE, 1, f"beacon:push:lease:{key}", token)
    except redis.RedisError:
        log.debug("push lease release failed; it expires by itself", exc_info=True)


def _log_outcome(sub_id: str, message_id: int, result: PushResult) -> None:
    metrics.record_push(get_redis(context.settings().redis_url), result.status)
    log.info(
        "push outcome=%s status=%s subscription=%s message=%s reason=%s",
        result.outcome,
        result.status,
        sub_id,
        message_id,
        result.reason,
        extra={
            "beacon_event": "push",
            "beacon_outcome": result.outcome,
            "beacon_status": result.status,
            "beacon_subscription_id": sub_id,
            "beacon_message_id": message_id,
        },
    )


def record_failure(job: PushJob, reason: str, status: int | None = None) -> None:
    """The send failed for good: count it against the subscription, put it in the user's
    history, and mark the send ended so that a reconciliation does not try it again."""
    sub_id = uuid.UUID(job.subscription_id)
    if claim(job.failed_marker):
        sub = db.session.execute(
            select(PushSubscription.user_id, PushSubscription.endpoint).where(
                PushSubscription.id == sub_id
            )
        ).first()
        if sub is not None:
            push_history.record(
                user_id=sub.user_id,
                subscription_id=sub_id,
                endpoint=sub.endpoint,
                payload=job.payload,
                outcome="failed",
                status=status,
                reason=reason,
            )
    db.session.execute(
        update(PushSubscription)
        .where(PushSubscription.id == sub_id)
        .values(
            failure_count=PushSubscription.failure_count + 1,
            last_failure_at=utcnow(),
        )
    )
    db.session.commit()
    log.warning("push subscription=%s failed for good: %s", job.subscription_id, reason)


def deliver(job: PushJob) -> PushResult | None:
    """Send one push and apply its outcome; None when there is nothing (left) to do.

    A ``retry`` outcome changes nothing here: the task decides to retry or to give up.
    """
    key = job.marker
    sub_id = uuid.UUID(job.subscription_id)
    lease = _acquire_lease(key)
    if lease is None:
        log.info(
            "push skipped subscription=%s message=%s: another attempt is in flight",
            job.subscription_id,
            job.message_id,
        )
        return None
    try:
        # Checked under the lease: a copy that waited for it sees the first one's marker.
        if is_claimed(key):
            log.info(
                "push skipped subscription=%s message=%s: already delivered",
                job.subscription_id,
                job.message_id,
            )
            return None
        sub = db.session.get(PushSubscription, sub_id)
        if sub is None:
            return None
        keys = SubscriptionKeys(sub.endpoint, sub.p256dh, sub.auth)
        user_id = sub.user_id
        db.session.rollback()  # no transaction held open across the HTTP request
        return _send_and_apply(job, user_id, keys)
    finally:
        _release_lease(key, lease)


def _send_and_apply(job: PushJob, user_id: uuid.UUID, keys: SubscriptionKeys) -> PushResult:
    settings = context.settings()
    sub_id = uuid.UUID(job.subscription_id)
    try:
        check_endpoint_target(keys.endpoint, settings.push_allowed_hosts)
    except SubscriptionError as exc:
        outcome = "retry" if exc.code == "dns_error" else "rejected"
        result = PushResult(status=None, outcome=outcome, reason=exc.message)
    else:
        body = json.dumps(job.payload, separators=(",", ":")).encode()
        result = sender().send(
            keys, body, ttl=settings.push_ttl, urgency=job.urgency, topic=job.topic
        )
    _log_outcome(job.subscription_id, job.message_id, result)

    def remember(outcome: str) -> None:
        push_history.record(
            user_id=user_id,
            subscription_id=sub_id,
            endpoint=keys.endpoint,
            payload=job.payload,
            outcome=outcome,
            status=result.status,
            reason=result.reason,
        )

    if result.outcome == "delivered":
        if claim(job.marker):
            db.session.execute(
                update(PushSubscription)
                .where(PushSubscription.id == sub_id)
                .values(last_success_at=utcnow(), failure_count=0)
            )
            remember("delivered")
        db.session.commit()
    elif result.outcome == "expired":
        deleted = db.session.execute(
            delete(PushSubscription).where(
                and_(
                    PushSubscription.id == sub_id,
                    PushSubscription.endpoint == keys.endpoint,
                    PushSubscription.p256dh == keys.p256dh,
                    PushSubscription.auth == keys.auth,
                )
            )
        ).rowcount
        if deleted:
            remember("expired")
        db.session.commit()
    elif result.outcome == "rejected":
        record_failure(job, result.reason, result.status)
    return result


def prune_failing() -> int:
    """Delete subscriptions that failed too often in a row (beat)."""
    limit = context.settings().push_failure_limit
    deleted = db.session.execute(
        delete(PushSubscription).where(PushSubscription.failure_count >= limit)
    ).rowcount
    db.session.commit()
    if deleted:
        log.info("pruned %d push subscriptions that kept failing", deleted)
    return deleted
