"""One batch of deliveries: claim, send through a channel, book every outcome at once.

A batch holds up to ``PUSH_BATCH_SIZE`` deliveries of one message to devices of one push
service, through one channel (Web Push, FCM or APNs; mobile devices also get the user's unread
total as the app's badge). Its Redis and database work is per batch, not per device: one round
trip takes a lease on every delivery (two copies of a batch, e.g. one redelivered after its
worker died, never send at once), one query finds the deliveries that already ended (markers),
one loads the devices; after the channel answered, one transaction writes the delivered and
failed markers (each in one INSERT), the history rows (one INSERT), the devices' success and
failure counts (one UPDATE per outcome) and deletes expired devices (one DELETE, by id *and*
the keys or token the push was sent with, so a device that registered again meanwhile keeps
its fresh row).

Exactly once: a delivery whose ``push:<message>:<device>`` marker exists is never sent again.
A worker killed mid-batch marked nothing of it, so the redelivered batch sends what it has not
marked; the lease outlives the batch's longest possible send, so the copies never overlap.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import and_, case, delete, exists, func, or_, select, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from webapp import metrics
from webapp.delivery import channels, history
from webapp.delivery.channels.base import DeviceToken, Item, Notification, Outcome
from webapp.delivery.channels.webpush.subscription import SubscriptionKeys
from webapp.delivery.payload import notification
from webapp.extensions import db
from webapp.messaging.unread import increment_marker
from webapp.models import Message, ProcessedEvent, PushSubscription, TopicMember, User, utcnow
from webapp.platform import context, events
from webapp.platform.idempotency import claim_many, claimed_among
from webapp.redis_client import get_redis

log = logging.getLogger(__name__)

KINDS = ("message", "mention")
LEASE_PREFIX = "beacon:push:lease:"
# Deliveries another attempt holds are looked at again after its lease ends, or this long.
BUSY_RECHECK = 5.0


@dataclass(frozen=True)
class Delivery:
    """One notification about ``message_id`` to one device of ``user_id``.

    ``count`` messages it stands for (coalescing); ``summary``: the push that ends a
    coalescing window, with its own marker (the message it names may have had its own push).
    """

    device_id: str
    user_id: str
    message_id: int
    kind: str = "message"
    count: int = 1
    summary: bool = False

    @property
    def marker(self) -> str:
        """Recorded when delivered: the delivery is never sent again."""
        return send_marker("push", self.message_id, self.device_id, self.summary)

    @property
    def failed_marker(self) -> str:
        """Recorded when it failed for good (reconciliation skips it)."""
        return send_marker("pushfailed", self.message_id, self.device_id, self.summary)

    def wire(self) -> list[Any]:
        """The task argument: ids and numbers only (a task never carries message text)."""
        return [self.device_id, self.user_id, self.kind, self.count, self.summary]

    @classmethod
    def from_wire(cls, message_id: int, raw: Sequence[Any]) -> Delivery:
        device_id, user_id, kind, count, summary = raw
        if kind not in KINDS or not isinstance(count, int) or count < 1:
            raise ValueError(f"malformed delivery {raw!r}")
        return cls(
            str(uuid.UUID(device_id)),
            str(uuid.UUID(user_id)),
            message_id,
            kind,
            count,
            bool(summary),
        )


def send_marker(kind: str, message_id: int, device_id: str, summary: bool = False) -> str:
    """``push:<message>:<device>`` (delivered) or ``pushfailed:…`` (failed for good), with
    ``:summary`` for the push that ends a coalescing window."""
    key = f"{kind}:{message_id}:{device_id}"
    return f"{key}:summary" if summary else key


@dataclass(frozen=True)
class Later:
    """What a batch leaves for later: the deliveries the channel asked to try again (with
    the longest wait it asked for), and those another attempt holds a lease on (to look at
    again when the longest such lease ends: delivered by then, or its holder died)."""

    retry: list[Delivery] = field(default_factory=list)
    retry_after: float | None = None
    busy: list[Delivery] = field(default_factory=list)
    busy_for: float = 0.0


# One round trip takes (or releases) the leases of a whole batch. For each key: -1 when taken,
# else how many milliseconds the holder's lease has left.
_ACQUIRE = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = -1
  else
    out[i] = math.max(redis.call('PTTL', key), 0)
  end
end
return out
"""
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


def lease_seconds(size: int) -> float:
    """How long a batch of ``size`` may take: its rounds of concurrent requests, each within
    the request deadline, and one more deadline for its bookkeeping. Its leases last that long,
    so a copy of the batch (redelivered while the first still runs) never sends beside it."""
    s = context.settings()
    rounds = -(-max(1, size) // s.push_send_concurrency)
    return (rounds + 1) * s.push_request_timeout


def _acquire(deliveries: list[Delivery], token: str) -> tuple[list[Delivery], float]:
    """The deliveries whose lease this batch got, and how long the longest lease held by
    another attempt has left (0 if none). Fails open: when Redis cannot answer, sending twice
    is better than not at all."""
    ttl_ms = int(lease_seconds(len(deliveries)) * 1000)
    keys = [LEASE_PREFIX + d.marker for d in deliveries]
    try:
        left = get_redis(context.settings().redis_url).eval(
            _ACQUIRE, len(keys), *keys, token, ttl_ms
        )
    except redis.RedisError:
        log.warning("push leases unavailable (Redis); sending without them", exc_info=True)
        return deliveries, 0.0
    taken = [d for d, ms in zip(deliveries, left, strict=True) if ms < 0]
    busy_for = max([ms / 1000 for ms in left if ms >= 0], default=0.0)
    return taken, min(busy_for, BUSY_RECHECK)


def _release(deliveries: list[Delivery], token: str) -> None:
    if not deliveries:
        return
    keys = [LEASE_PREFIX + d.marker for d in deliveries]
    try:
        get_redis(context.settings().redis_url).eval(_RELEASE, len(keys), *keys, token)
    except redis.RedisError:
        log.debug("push lease release failed; they expire by themselves", exc_info=True)


@dataclass(frozen=True)
class _Device:
    user_id: uuid.UUID
    channel: str
    endpoint: str | None
    p256dh: str | None
    auth: str | None
    token: str | None
    app_id: str | None

    @property
    def mobile(self) -> bool:
        return self.channel != "webpush"

    def address(self) -> SubscriptionKeys | DeviceToken:
        """What the channel needs to reach the device: a browser's keys, or an app's token."""
        if self.mobile:
            return DeviceToken(self.token or "", self.app_id)
        return SubscriptionKeys(self.endpoint or "", self.p256dh or "", self.auth or "")

    def sent_to(self) -> Any:
        """Matches the row only while it still has the address the push went to."""
        if self.mobile:
            return PushSubscription.token == self.token
        return and_(
            PushSubscription.endpoint == self.endpoint,
            PushSubscription.p256dh == self.p256dh,
            PushSubscription.auth == self.auth,
        )


def run(
    channel_name: str, message_id: int, deliveries: list[Delivery], *, final: bool, attempts: int
) -> Later:
    """Send a batch and book its outcomes; returns what is left for later.

    ``final``: the worker will not retry, so a ``retry`` outcome fails for good (``attempts``
    names how many were made, for the reason).
    """
    token = uuid.uuid4().hex
    leased, busy_for = _acquire(deliveries, token)
    taken = set(leased)
    busy = [d for d in deliveries if d not in taken]
    for d in busy:
        log.info(
            "push deferred subscription=%s message=%s: another attempt holds it",
            d.device_id,
            d.message_id,
        )
    try:
        retry, retry_after = _run_leased(
            channel_name, message_id, leased, final=final, attempts=attempts
        )
    finally:
        _release(leased, token)
    return Later(retry, retry_after, busy, busy_for)


def _run_leased(
    channel_name: str, message_id: int, leased: list[Delivery], *, final: bool, attempts: int
) -> tuple[list[Delivery], float | None]:
    # Checked under the lease: a copy that waited for it sees the first one's markers.
    ended = claimed_among([k for d in leased for k in (d.marker, d.failed_marker)])
    todo = [d for d in leased if d.marker not in ended and d.failed_marker not in ended]
    _log_skipped([d for d in leased if d.marker in ended or d.failed_marker in ended])
    message = db.session.get(Message, message_id)
    devices = _devices([d.device_id for d in todo]) if todo and message else {}
    sendable: list[tuple[Delivery, _Device]] = []
    for d in todo:
        device = devices.get(d.device_id)
        if device is None:
            continue  # deleted meanwhile
        if str(device.user_id) != d.user_id:
            # The browser re-subscribed under another account: it is not this user's any more.
            log.info(
                "push skipped subscription=%s message=%s: it changed owner", d.device_id, message_id
            )
            continue
        sendable.append((d, device))
    if not sendable:
        db.session.rollback()
        return [], None
    notes: dict[tuple[str, int, bool], Notification] = {}
    items: list[Item] = []
    badges = unread_totals(
        [device.user_id for _, device in sendable if device.mobile], message_id=message_id
    )
    for d, device in sendable:
        note = notes.get((d.kind, d.count, d.summary))
        if note is None:
            note = notes[d.kind, d.count, d.summary] = notification(
                message, d.kind, d.count, d.summary
            )
        badge = badges.get(device.user_id, 0) if device.mobile else None
        items.append(Item(address=device.address(), notification=note, badge=badge))
    db.session.rollback()  # no transaction held open across the requests
    try:
        channel = channels.get(channel_name)
    except (RuntimeError, OSError, ValueError) as exc:  # e.g. a key file that cannot be read
        log.error("push channel %s cannot send: %s", channel_name, exc)
        reason = f"{channel_name} is not configured correctly on the server"
        outcomes = [Outcome(None, "retry", None, reason)] * len(items)
    else:
        outcomes = channel.send(items)
    return _book(message_id, sendable, items, outcomes, final=final, attempts=attempts)


def _devices(device_ids: list[str]) -> dict[str, _Device]:
    return _devices_where(PushSubscription.id.in_([uuid.UUID(i) for i in device_ids]))


def devices_of(user_id: uuid.UUID, channels: Sequence[str]) -> dict[str, _Device]:
    """A user's devices on the given channels, by id."""
    return _devices_where(
        PushSubscription.user_id == user_id, PushSubscription.channel.in_(channels)
    )


def _devices_where(*where: Any) -> dict[str, _Device]:
    rows = db.session.execute(
        select(
            PushSubscription.id,
            PushSubscription.user_id,
            PushSubscription.channel,
            PushSubscription.endpoint,
            PushSubscription.p256dh,
            PushSubscription.auth,
            PushSubscription.token,
            PushSubscription.app_id,
        ).where(*where)
    ).all()
    return {str(r.id): _Device(*r[1:]) for r in rows}


def unread_totals(
    user_ids: Sequence[uuid.UUID], *, message_id: int | None = None
) -> dict[uuid.UUID, int]:
    """Each user's unread count across their topics (a mobile app's badge), in one query.

    ``message_id``: the message being pushed, counted while its unread increment has not been
    applied yet (the push and the increment are separate tasks, either may run first); one
    statement reads the counts and the increment's marker, so it is counted exactly once.
    """
    if not user_ids:
        return {}
    total = func.coalesce(func.sum(TopicMember.unread_count), 0)
    if message_id is not None:
        pending = ~exists().where(ProcessedEvent.key == increment_marker(message_id))
        total = total + case((pending, 1), else_=0)
    return dict(
        db.session.execute(
            select(TopicMember.user_id, total)
            .where(TopicMember.user_id.in_(set(user_ids)))
            .group_by(TopicMember.user_id)
        ).all()
    )


# A device's last_success_at moves at most this often: in a burst every push of a device would
# otherwise write (and lock) its row, and the batches of one device would queue on that lock.
SUCCESS_RESOLUTION = timedelta(seconds=60)
# Booking is retried in place when the database refuses it for a moment (a lock timeout, a
# connection not to be had): the pushes are sent already, and retrying the task would send them
# again.
BOOK_ATTEMPTS = 4


def _book(
    message_id: int,
    sent: list[tuple[Delivery, _Device]],
    items: list[Item],
    outcomes: list[Outcome],
    *,
    final: bool,
    attempts: int,
) -> tuple[list[Delivery], float | None]:
    """Every outcome of the batch in one transaction; returns what to retry, and after how
    long at least."""
    delivered: list[int] = []
    expired: list[int] = []
    failed: list[tuple[int, str]] = []  # index, reason
    retry: list[int] = []
    for i, outcome in enumerate(outcomes):
        _log_outcome(sent[i][0], outcome)
        if outcome.kind == "delivered":
            delivered.append(i)
        elif outcome.kind == "expired":
            expired.append(i)
        elif outcome.kind == "rejected":
            failed.append((i, outcome.reason))
        elif final:
            failed.append((i, f"gave up after {attempts} attempts: {outcome.reason}"))
        else:
            retry.append(i)
    for attempt in range(BOOK_ATTEMPTS):
        try:
            removed, newly_failed = _write_outcomes(
                sent, items, outcomes, delivered, expired, failed
            )
            break
        except (OperationalError, PoolTimeout) as exc:
            db.session.rollback()
            if attempt == BOOK_ATTEMPTS - 1:
                raise
            log.warning("booking the pushes of message %s failed (%s); again", message_id, exc)
            time.sleep(0.2 * 2**attempt)
    for i, reason in newly_failed:
        log.warning(
            "push device=%s message=%s failed for good: %s",
            sent[i][0].device_id,
            message_id,
            reason,
        )
    metrics.record_pushes(get_redis(context.settings().redis_url), (o.status for o in outcomes))
    _publish_ended(message_id, sent, outcomes, newly_failed, removed)
    floors = [outcomes[i].retry_after for i in retry if outcomes[i].retry_after is not None]
    return [sent[i][0] for i in retry], max(floors, default=None)


def _write_outcomes(
    sent: list[tuple[Delivery, _Device]],
    items: list[Item],
    outcomes: list[Outcome],
    delivered: list[int],
    expired: list[int],
    failed: list[tuple[int, str]],
) -> tuple[list[int], list[tuple[int, str]]]:
    """One transaction: the markers, the devices' rows, the history. Returns the expired
    devices this batch deleted and the failures it recorded (a copy of the batch that ran
    first has recorded the others)."""
    rows: list[dict[str, Any]] = []

    def remember(i: int, outcome: str, reason: str | None = None) -> None:
        d, device = sent[i]
        rows.append(
            history.row(
                user_id=device.user_id,
                subscription_id=uuid.UUID(d.device_id),
                channel=device.channel,
                endpoint=device.endpoint,
                payload=items[i].notification.payload,
                outcome=outcome,
                status=outcomes[i].status,
                reason=outcomes[i].reason if reason is None else reason,
            )
        )

    def device_id(i: int) -> uuid.UUID:
        return uuid.UUID(sent[i][0].device_id)

    now = utcnow()
    fresh = claim_many([sent[i][0].marker for i in delivered])
    newly = [i for i in delivered if sent[i][0].marker in fresh]
    fresh = claim_many([sent[i][0].failed_marker for i, _ in failed])
    newly_failed = [(i, r) for i, r in failed if sent[i][0].failed_marker in fresh]
    # The rows to write, locked in one statement in id order: two batches that share devices
    # then never wait for each other in a cycle (a deadlock, found with bursts on PostgreSQL).
    succeeded = {device_id(i) for i in newly}
    changed = {device_id(i) for i in expired} | {device_id(i) for i, _ in newly_failed}
    locked = set()
    if succeeded or changed:
        locked = set(
            db.session.execute(
                select(PushSubscription.id)
                .where(
                    or_(
                        PushSubscription.id.in_(changed),
                        and_(
                            PushSubscription.id.in_(succeeded),
                            or_(
                                PushSubscription.failure_count != 0,
                                PushSubscription.last_success_at.is_(None),
                                PushSubscription.last_success_at < now - SUCCESS_RESOLUTION,
                            ),
                        ),
                    )
                )
                .order_by(PushSubscription.id)
                .with_for_update()
            ).scalars()
        )
    if succeeded & locked:
        db.session.execute(
            update(PushSubscription)
            .where(PushSubscription.id.in_(succeeded & locked))
            .values(last_success_at=now, failure_count=0)
        )
    for i in newly:
        remember(i, "delivered")
    removed: list[int] = []
    if expired:
        gone = set(
            db.session.execute(
                delete(PushSubscription)
                .where(
                    or_(
                        *(
                            and_(PushSubscription.id == device_id(i), sent[i][1].sent_to())
                            for i in expired
                        )
                    )
                )
                .returning(PushSubscription.id)
            ).scalars()
        )
        for i in expired:
            if device_id(i) in gone:
                remember(i, "expired")
                removed.append(i)
    if newly_failed:
        db.session.execute(
            update(PushSubscription)
            .where(PushSubscription.id.in_({device_id(i) for i, _ in newly_failed}))
            .values(failure_count=PushSubscription.failure_count + 1, last_failure_at=now)
        )
    for i, reason in newly_failed:
        remember(i, "failed", reason)
    history.insert(rows)
    db.session.commit()
    return removed, newly_failed


def _publish_ended(
    message_id: int,
    sent: list[tuple[Delivery, _Device]],
    outcomes: list[Outcome],
    failed: list[tuple[int, str]],
    removed: list[int],
) -> None:
    """``push.failed`` and ``device.removed`` for the integration's webhooks, one task per
    event type and batch; nothing is read unless an enabled hook subscribes. Each event's id
    derives from what it reports, so a repeat (a redelivered batch) has the same id."""
    ended = (("push.failed", failed), ("device.removed", removed))
    wanted = {event for event, todo in ended if todo and events.subscribed(event)}
    if not wanted:
        return
    user_ids = {sent[i][1].user_id for i in [*removed, *(i for i, _ in failed)]}
    try:
        topic_id = db.session.scalar(select(Message.topic_id).where(Message.id == message_id))
        external = dict(
            db.session.execute(select(User.id, User.external_id).where(User.id.in_(user_ids))).all()
        )
    except SQLAlchemyError as exc:  # the batch is booked: it must not fail now
        log.warning("push events of message %s not published (%s)", message_id, exc)
        return
    finally:
        db.session.rollback()

    def data(i: int, reason: str) -> dict[str, Any]:
        d, device = sent[i]
        return {
            "user_id": d.user_id,
            "user_external_id": external.get(device.user_id),
            "device_id": d.device_id,
            "message_id": message_id,
            "topic_id": None if topic_id is None else str(topic_id),
            "status": outcomes[i].status,
            "reason": reason,
        }

    if "push.failed" in wanted:
        events.publish_many(
            "push.failed",
            [(data(i, reason), _event_id(sent[i][0].failed_marker)) for i, reason in failed],
        )
    if "device.removed" in wanted:
        events.publish_many(
            "device.removed",
            [
                (data(i, outcomes[i].reason), _event_id(f"removed:{sent[i][0].device_id}"))
                for i in removed
            ],
        )


def _event_id(key: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"beacon:{key}"))


def _log_skipped(deliveries: list[Delivery]) -> None:
    for d in deliveries:
        log.info("push skipped subscription=%s message=%s: already sent", d.device_id, d.message_id)


def _log_outcome(d: Delivery, result: Outcome) -> None:
    log.info(
        "push outcome=%s status=%s subscription=%s message=%s reason=%s",
        result.kind,
        result.status,
        d.device_id,
        d.message_id,
        result.reason,
        extra={
            "beacon_event": "push",
            "beacon_outcome": result.kind,
            "beacon_status": result.status,
            "beacon_subscription_id": d.device_id,
            "beacon_message_id": d.message_id,
        },
    )


def prune_failing() -> int:
    """Delete devices that failed too often in a row (beat); each is a ``device.removed``
    event (reason ``failing``) for the integration's webhooks."""
    limit = context.settings().push_failure_limit
    rows = db.session.execute(
        select(PushSubscription.id, PushSubscription.user_id, User.external_id)
        .join(User, User.id == PushSubscription.user_id)
        .where(PushSubscription.failure_count >= limit)
    ).all()
    # By id and count: a device that succeeded meanwhile (count reset) stays.
    deleted = set(
        db.session.execute(
            delete(PushSubscription)
            .where(
                PushSubscription.id.in_([row[0] for row in rows]),
                PushSubscription.failure_count >= limit,
            )
            .returning(PushSubscription.id)
        ).scalars()
    )
    db.session.commit()
    rows = [row for row in rows if row[0] in deleted]
    if rows:
        log.info("pruned %d push subscriptions that kept failing", len(rows))
        publish_removed([tuple(row) for row in rows], "failing")
    return len(rows)


def publish_removed(devices: list[tuple[uuid.UUID, uuid.UUID, str | None]], reason: str) -> None:
    """``device.removed`` for devices deleted apart from a push (``(device, user, the user's
    external id)`` each): no message, topic or status."""
    events.publish_many(
        "device.removed",
        [
            (
                {
                    "user_id": str(user_id),
                    "user_external_id": external_id,
                    "device_id": str(device_id),
                    "message_id": None,
                    "topic_id": None,
                    "status": None,
                    "reason": reason,
                },
                _event_id(f"removed:{device_id}"),
            )
            for device_id, user_id, external_id in devices
        ],
    )
