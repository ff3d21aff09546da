"""Who is notified of a new message, and how the deliveries are grouped into send batches.

The fan-out picks the members who are not the sender and are away: no live connection, or
only idle ones (unless PUSH_WHEN_IDLE or their ``push_when_idle`` says no), whose preferences
and do-not-disturb allow it (``rules``); coalescing (``coalescing``) then sends at once or
holds for one push at the window's end; ``@username`` makes a member's push a ``mention``.
Away members whose email level allows the message get it held for their email digest
(``digests``), written with the fan-out's marker.

Deliveries go out in batches of ``PUSH_BATCH_SIZE``, each through one channel to one push
service (a Web Push origin, FCM or APNs; ``batch`` sends and books them), so a big topic
costs a task per hundred devices, not per device, and one slow push service never holds
another's batch. Devices of a channel the deployment has no credentials for are left out.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, select

from webapp import metrics
from webapp.delivery import coalescing, decisions, digests, rules
from webapp.delivery.batch import Delivery, send_marker
from webapp.extensions import db
from webapp.messaging.mentions import mentioned_usernames
from webapp.models import Message, PushSubscription, TopicMember, User, utcnow
from webapp.platform import context
from webapp.platform.idempotency import claim, claimed_among, is_claimed
from webapp.presence.store import presence
from webapp.redis_client import get_redis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """Deliveries of one message through one channel to one push service."""

    channel: str
    message_id: int
    deliveries: list[Delivery]


@dataclass(frozen=True)
class FanoutPlan:
    """The batches to send now, the coalescing flushes to enqueue: (topic, delay in seconds,
    users whose window ends then), the missed messages to hold for email digests, and the
    members' notification decisions."""

    batches: list[Batch] = field(default_factory=list)
    flushes: list[tuple[str, float, list[str]]] = field(default_factory=list)
    emails: list[digests.Missed] = field(default_factory=list)
    # Each member's decision, recorded once the batches are enqueued (``decisions.record``):
    # the first push does not wait for it.
    decided: list[decisions.Decision] = field(default_factory=list)

    @property
    def deliveries(self) -> int:
        return sum(len(b.deliveries) for b in self.batches)


def _now_ms() -> int:
    return int(time.time() * 1000)


Route = tuple[str, str]  # (channel, push service): a batch's deliveries share both


def route(channel: str, endpoint: str | None) -> Route:
    """Web Push devices go by their push service's origin; FCM and APNs each are one."""
    if channel == "webpush":
        parts = urlsplit(endpoint or "")
        return channel, f"{parts.scheme}://{parts.netloc}"
    return channel, channel


def batches(message_id: int, deliveries: Iterable[tuple[Route, Delivery]]) -> list[Batch]:
    """Group ``(route, delivery)`` pairs by channel and push service, ``PUSH_BATCH_SIZE``
    each."""
    size = context.settings().push_batch_size
    by_route: dict[Route, list[Delivery]] = {}
    for where, delivery in deliveries:
        by_route.setdefault(where, []).append(delivery)
    return [
        Batch(where[0], message_id, group[start : start + size])
        for where, group in by_route.items()
        for start in range(0, len(group), size)
    ]


def _flush_groups(
    topic_id: str, flushes: list[tuple[str, float]]
) -> list[tuple[str, float, list[str]]]:
    """Flushes whose windows end in the same second go out as one task (a busy topic's
    second message opens a flush for each of its offline members at once)."""
    size = context.settings().push_batch_size
    by_second: dict[int, list[str]] = {}
    for user_id, delay in flushes:
        by_second.setdefault(int(delay) + 1, []).append(user_id)
    return [
        (topic_id, float(second), users[start : start + size])
        for second, users in sorted(by_second.items())
        for start in range(0, len(users), size)
    ]


def plan_fanout(message_id: int, *, replan: bool = False) -> FanoutPlan:
    """Who gets a push for this message, now or in a later coalesced one.

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
    settings = context.settings()
    rows = db.session.execute(
        select(User.id, User.username, User.email, User.email_failing_at)
        .join(TopicMember, TopicMember.user_id == User.id)
        .where(TopicMember.topic_id == message.topic_id, User.id != message.sender_id)
    ).all()
    members = {str(r.id): r.username for r in rows}
    online, active = presence().online_and_active_among(list(members))
    away = [uuid.UUID(uid) for uid in members if uid not in active]
    subs_of: dict[uuid.UUID, list[tuple[str, Route]]] = {}  # user -> [(device id, route)]
    if away and settings.push_enabled:
        query = _devices_query(away)
        if replan:
            query = query.where(PushSubscription.created_at <= message.created_at)
        found = db.session.execute(query).all()
        ended = _ended(message.id, [str(r.id) for r in found]) if replan else set()
        for sub_id, user_id, channel, endpoint in found:
            if str(sub_id) not in ended:
                subs_of.setdefault(user_id, []).append((str(sub_id), route(channel, endpoint)))

    # Email goes to away members with a working address; not again on a replan (the first
    # plan's held messages were written with the fan-out marker, and may be sent already).
    mailable = set()
    if settings.email_enabled and not replan:
        away_ids = set(away)
        mailable = {r.id for r in rows if r.id in away_ids and r.email and not r.email_failing_at}
    mentioned = mentioned_usernames(message.body)
    # Every away member's rules: the decisions say why each one was or was not pushed.
    is_mention = {uid: members[str(uid)].lower() in mentioned for uid in away}
    member_rules = rules.rules_for(away, message.topic)
    now = utcnow()
    rules_of = {uid: member_rules.get(uid, rules.DEFAULT) for uid in is_mention}
    idle_ok = settings.push_when_idle
    wanted = [
        (uid, is_mention[uid])
        for uid in subs_of
        if (str(uid) not in online or (idle_ok and rules_of[uid].push_when_idle))
        and rules_of[uid].allows(mentioned=is_mention[uid], now=now)
    ]
    emails = [
        digests.Missed(
            uid, message.id, message.topic_id, is_mention[uid], rules_of[uid].email_delay
        )
        for uid in mailable
        if rules_of[uid].allows_email(mentioned=is_mention[uid])
    ]
    offers = coalescing.offer(message.id, message.topic_id, wanted, _now_ms())

    planned: list[tuple[str, Delivery]] = []
    flushes: list[tuple[str, float]] = []
    for uid, offer in offers.items():
        if offer.flush_in is not None:
            flushes.append((str(uid), offer.flush_in))
        if not offer.send:
            continue
        kind = "mention" if is_mention[uid] else "message"
        planned.extend(
            (where, Delivery(sub_id, str(uid), message.id, kind, offer.count))
            for sub_id, where in subs_of[uid]
        )
    decided = []
    if settings.push_enabled and settings.decisions_days > 0 and not replan:
        decided = _fanout_decisions(
            message, members, active, away, online, rules_of, is_mention, subs_of, offers, now
        )
    plan = FanoutPlan(
        batches(message.id, planned),
        _flush_groups(str(message.topic_id), flushes),
        emails,
        decided,
    )
    silenced = len(subs_of) - len(wanted)
    held = sum(1 for o in offers.values() if not o.send)
    metrics.record_push_decisions(
        get_redis(context.settings().redis_url),
        {"sent": len(offers) - held, "silenced": silenced, "held": held},
    )
    log.info(
        "push fan-out message=%s away_members=%d silenced=%d held=%d batches=%d emails=%d "
        "subscriptions=%d",
        message_id,
        len(away),
        silenced,
        held,
        len(plan.batches),
        len(emails),
        plan.deliveries,
    )
    return plan


def _fanout_decisions(
    message: Message,
    members: dict[str, str],
    active: set[str],
    away: list[uuid.UUID],
    online: set[str],
    rules_of: dict[uuid.UUID, rules.Rules],
    is_mention: dict[uuid.UUID, bool],
    subs_of: dict[uuid.UUID, list[tuple[str, Route]]],
    offers: dict[uuid.UUID, coalescing.Offer],
    now: Any,
) -> list[decisions.Decision]:
    """Each member's decision, in the order the fan-out applies its rules (plain tuples and
    no id parsing: a big topic's fan-out makes one per member)."""
    topic_id, message_id = str(message.topic_id), message.id
    found = [decisions.Decision(str(message.sender_id), topic_id, message_id, "sender")]
    found.extend(
        decisions.Decision(user_id, topic_id, message_id, "online", None, "active")
        for user_id in members
        if user_id in active
    )
    idle_ok = context.settings().push_when_idle
    default = rules.DEFAULT
    for uid in away:
        user_id = str(uid)
        rule = rules_of.get(uid, default)
        if user_id in online and not (idle_ok and rule.push_when_idle):
            kind, why, detail = "online", None, "idle"
        elif not rule.allows(mentioned=is_mention[uid], now=now):
            kind, why, detail = decisions.silenced(rule, mentioned=is_mention[uid], now=now)
        elif uid not in subs_of:
            kind, why, detail = "no_device", None, None
        else:
            offer = offers.get(uid)
            kind = "pushed" if offer is None or offer.send else "coalesced"
            why = None
            detail = decisions.CARRIES_HELD if offer is not None and offer.count > 1 else None
        found.append(decisions.Decision(user_id, topic_id, message_id, kind, why, detail))
    return found


def _ended(message_id: int, device_ids: list[str]) -> set[str]:
    """The devices whose send of this message already ended (delivered or failed for good)."""
    keys = {
        send_marker(kind, message_id, device_id): device_id
        for device_id in device_ids
        for kind in ("push", "pushfailed")
    }
    return {keys[k] for k in claimed_among(list(keys))}


def plan_flush(topic_id: str, user_ids: list[str]) -> tuple[list[Batch], list[decisions.Decision]]:
    """The one push per user for what their coalescing window held, unless the user caught
    up meanwhile (came online, read the topic) or their rules now say no; and each user's
    decision (to record once the batches are enqueued)."""
    now_ms = _now_ms()
    held_of = {}
    for user_id in user_ids:
        held = coalescing.take(user_id, topic_id, now_ms)
        if held is None:
            log.info("push flush user=%s topic=%s: nothing held", user_id, topic_id)
        else:
            held_of[user_id] = held
    if not held_of:
        return [], []
    uids = [uuid.UUID(u) for u in held_of]
    read_up_to = dict(
        db.session.execute(
            select(TopicMember.user_id, TopicMember.last_read_message_id).where(
                TopicMember.topic_id == uuid.UUID(topic_id), TopicMember.user_id.in_(uids)
            )
        ).all()
    )
    messages = {
        m.id: m
        for m in db.session.execute(
            select(Message).where(Message.id.in_({h.last_message_id for h in held_of.values()}))
        ).scalars()
    }
    online, active = presence().online_and_active_among(list(held_of))
    idle_ok = context.settings().push_when_idle
    topic = next(iter(messages.values())).topic if messages else None
    member_rules = rules.rules_for(uids, topic) if topic is not None else {}
    now = utcnow()
    redis_client = get_redis(context.settings().redis_url)
    planned: dict[int, list[tuple[Route, Delivery]]] = {}
    flushed: list[uuid.UUID] = []
    decided: list[decisions.Decision] = []
    skipped = 0
    subs = _subscriptions_of(uids)
    for uid in uids:
        user_id = str(uid)
        held = held_of[user_id]
        message = messages.get(held.last_message_id)
        rule = member_rules.get(uid, rules.DEFAULT)
        skip, outcome = None, None  # outcome: the flush's decision, (kind, rule, detail)
        if message is None or uid not in read_up_to:
            skip = "the message or the membership is gone"
        elif user_id in active:
            skip, outcome = "the user is active", ("online", None, "active")
        elif user_id in online and not (idle_ok and rule.push_when_idle):
            skip = "the user is idle, and not pushed to when idle"
            outcome = ("online", None, "idle")
        elif (read_up_to[uid] or 0) >= message.id:
            skip, outcome = "the user read the topic", ("read_first", None, None)
        elif not rule.allows(mentioned=held.mentioned, now=now):
            skip = "the user's preferences or do-not-disturb"
            outcome = decisions.silenced(rule, mentioned=held.mentioned, now=now)
        if skip is not None:
            coalescing.reset(user_id, topic_id)
            skipped += 1
            log.info("push flush user=%s topic=%s skipped: %s", user_id, topic_id, skip)
            if outcome is not None and message is not None:
                decided.append(
                    decisions.Decision(user_id, topic_id, message.id, *outcome, flush=True)
                )
            continue
        flushed.append(uid)
        decided.append(decisions.Decision(user_id, topic_id, message.id, "pushed", flush=True))
        kind = "mention" if held.mentioned else "message"
        devices = subs.get(uid, [])
        planned.setdefault(message.id, []).extend(
            (where, Delivery(sub_id, user_id, message.id, kind, held.count, summary=True))
            for sub_id, where in devices
        )
        log.info(
            "push flush user=%s topic=%s messages=%d subscriptions=%d",
            user_id,
            topic_id,
            held.count,
            len(devices),
        )
    metrics.record_push_decisions(redis_client, {"flushed": len(flushed), "flush_skipped": skipped})
    planned_batches = [
        b for message_id, pairs in planned.items() for b in batches(message_id, pairs)
    ]
    return planned_batches, decided


def _devices_query(uids: list[uuid.UUID]) -> Select[Any]:
    """The users' devices on the channels this deployment can send through."""
    return select(
        PushSubscription.id,
        PushSubscription.user_id,
        PushSubscription.channel,
        PushSubscription.endpoint,
    ).where(
        PushSubscription.user_id.in_(uids),
        PushSubscription.channel.in_(context.settings().push_channels),
    )


def _subscriptions_of(uids: list[uuid.UUID]) -> dict[uuid.UUID, list[tuple[str, Route]]]:
    found: dict[uuid.UUID, list[tuple[str, Route]]] = {}
    for sub_id, user_id, channel, endpoint in db.session.execute(_devices_query(uids)).all():
        found.setdefault(user_id, []).append((str(sub_id), route(channel, endpoint)))
    return found


def mark_fanned_out(message_id: int, emails: list[digests.Missed]) -> None:
    """Record that a message's pushes are planned and enqueued (reconciliation looks for it),
    and hold its missed messages for the digests, in one transaction."""
    digests.hold(emails)
    claim(f"fanout:{message_id}")
    db.session.commit()
