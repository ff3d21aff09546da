"""Why a message did or did not notify a user: the planning step's decisions, kept per user.

The fan-out and the coalescing flush already decide, per member, in one place; they record
each decision where it is made, for all members of a message in one Lua call (one Redis round
trip per batch, not per member), into a capped list per user that expires by itself
(``DECISIONS_DAYS``). A flush's outcome goes to a second list, so that a held (``coalesced``)
message is resolved when it is read: to the push that carried it, or to why that push did not
go. Which devices a push reached comes from the push history, also when read.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import redis
from sqlalchemy import select

from webapp.delivery import rules
from webapp.extensions import db
from webapp.models import PushRecord, PushSubscription, TopicMember, User
from webapp.platform import context
from webapp.redis_client import get_redis

log = logging.getLogger(__name__)

PREFIX = "beacon:decisions"
# Decisions kept per user (the newest), and flush outcomes (one per window at most).
KEEP = 200
KEEP_FLUSHES = 200

KINDS = (
    "pushed",
    "online",
    "sender",
    "level",
    "dnd",
    "coalesced",
    "read_first",
    "no_device",
    "failed",
)

# KEYS: one list per entry; ARGV[1]: entries kept, ARGV[2]: seconds to live, ARGV[3]: the
# entries' common start (message, topic, time), ARGV[3 + i]: entry i's own end. LPUSH, LTRIM
# and EXPIRE each, in one call for the whole batch.
_RECORD = """
local keep, ttl, common = tonumber(ARGV[1]) - 1, tonumber(ARGV[2]), ARGV[3]
for i = 1, #KEYS do
  redis.call('LPUSH', KEYS[i], common .. ARGV[i + 3])
  redis.call('LTRIM', KEYS[i], 0, keep)
  redis.call('EXPIRE', KEYS[i], ttl)
end
return #KEYS
"""
_BATCH = 1000  # entries per call: bounds one script's run (Redis runs one at a time)
_scripts: dict[str, Any] = {}


class Decision(NamedTuple):
    """One member's decision for one message (``flush``: the outcome of a coalesced push,
    for the messages its window held). A tuple: a big topic's fan-out makes thousands."""

    user_id: str
    topic_id: str
    message_id: int
    decision: str
    rule: str | None = None
    detail: str | None = None
    flush: bool = False


# The detail of a push that also carried messages its coalescing window had held.
CARRIES_HELD = "carries_held"


def _key(user_id: str, flush: bool) -> str:
    return f"{PREFIX}:{'flushes' if flush else 'messages'}:{user_id}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def record(decisions: Iterable[Decision]) -> None:
    """Append the decisions to their users' lists, one Lua call per message and thousand
    users; never raises (a decision that could not be kept only leaves a gap in what the
    user can read)."""
    settings = context.settings()
    if settings.decisions_days <= 0:
        return
    groups: dict[tuple[str, int, bool], list[Decision]] = {}
    for d in decisions:
        groups.setdefault((d.topic_id, d.message_id, d.flush), []).append(d)
    if not groups:
        return
    now = _now_ms()
    ttl = int(settings.decisions_days * 86400)
    try:
        client = get_redis(settings.redis_url)
        script = _scripts.get(settings.redis_url)
        if script is None:
            script = _scripts[settings.redis_url] = client.register_script(_RECORD)
        for (topic_id, message_id, flush), chosen in groups.items():
            keep = KEEP_FLUSHES if flush else KEEP
            kind = "flushes" if flush else "messages"
            common = f'{{"m":{message_id},"t":"{topic_id}","at":{now},'
            for start in range(0, len(chosen), _BATCH):
                part = chosen[start : start + _BATCH]
                script(
                    keys=[f"{PREFIX}:{kind}:{d.user_id}" for d in part],
                    args=[
                        keep,
                        ttl,
                        common,
                        *(_ending(d.decision, d.rule, d.detail) for d in part),
                    ],
                )
    except redis.RedisError:
        log.warning("could not record notification decisions", exc_info=True)


@functools.cache
def _ending(decision: str, rule: str | None, detail: str | None) -> str:
    """An entry's own end of JSON, after the common start: the words are this module's."""
    extra = (f',"r":"{rule}"' if rule else "") + (f',"k":"{detail}"' if detail else "")
    return f'"d":"{decision}"{extra}}}'


def forget(user_id: uuid.UUID) -> None:
    """A deleted user's decisions go with them (best effort: else they expire by themselves)."""
    try:
        get_redis(context.settings().redis_url).delete(
            _key(str(user_id), False), _key(str(user_id), True)
        )
    except redis.RedisError:
        log.warning("could not delete the decisions of deleted user %s", user_id, exc_info=True)


def silenced(
    rule: rules.Rules, *, mentioned: bool, now: datetime
) -> tuple[str, str | None, str | None]:
    """Why ``rule`` does not let a message through: (``level``, which rule) or (``dnd``,
    ``snooze`` or ``quiet_hours``)."""
    if rule.level == "none" or (rule.level == "mentions" and not mentioned):
        return "level", rule.level_rule, None
    return "dnd", None, rule.dnd_kind(now)


# -- reading -----------------------------------------------------------------------------------
def read(
    user: User, *, limit: int, before: int | None, topic_id: uuid.UUID | None
) -> dict[str, Any]:
    """``GET /api/notifications/decisions``: the caller's decisions for messages of topics
    they are a member of, newest first."""
    settings = context.settings()
    client = get_redis(settings.redis_url)
    pipe = client.pipeline(transaction=False)
    pipe.lrange(_key(str(user.id), False), 0, -1)
    pipe.lrange(_key(str(user.id), True), 0, -1)
    raw, raw_flushes = pipe.execute()
    oldest = _now_ms() - int(settings.decisions_days * 86400 * 1000)
    read_up_to = {
        str(t): marker or 0
        for t, marker in db.session.execute(
            select(TopicMember.topic_id, TopicMember.last_read_message_id).where(
                TopicMember.user_id == user.id
            )
        ).all()
    }
    mine = set(read_up_to)
    by_message: dict[int, dict[str, Any]] = {}
    for entry in map(json.loads, raw):  # newest first: a repeated fan-out's copy is older
        if entry["at"] < oldest or entry["t"] not in mine or entry["m"] in by_message:
            continue
        if topic_id is not None and entry["t"] != str(topic_id):
            continue
        if before is not None and entry["m"] >= before:
            continue
        by_message[entry["m"]] = entry
    ordered = sorted(by_message.values(), key=lambda e: e["m"], reverse=True)
    page = ordered[:limit]
    flushes = [e for e in map(json.loads, raw_flushes) if e["t"] in mine]
    flushes.sort(key=lambda e: e["at"])
    pushed = sorted((e for e in by_message.values() if e["d"] == "pushed"), key=lambda e: e["m"])
    window_ms = int(settings.push_coalesce_window * 1000)
    answer = [_resolve(entry, flushes, pushed, read_up_to, window_ms) for entry in page]
    _attach_deliveries(user.id, answer)
    return {
        "decisions": answer,
        "next_before": page[-1]["m"] if len(ordered) > limit else None,
    }


def _resolve(
    entry: dict[str, Any],
    flushes: list[dict[str, Any]],
    pushed: list[dict[str, Any]],
    read_up_to: dict[str, int],
    window_ms: int,
) -> dict[str, Any]:
    found = {
        "message_id": entry["m"],
        "topic_id": entry["t"],
        "created_at": datetime.fromtimestamp(entry["at"] / 1000, UTC).isoformat(),
        "decision": entry["d"],
        "rule": entry.get("r"),
        "detail": entry.get("k"),
        "carried_by": None,
        "deliveries": [],
        # The push whose deliveries tell how it ended: this message's, or the coalesced one's.
        "_push": entry["m"] if entry["d"] == "pushed" else None,
    }
    if entry["d"] == "coalesced":
        # The first flush of the topic after the message was held ended its window.
        flush = next(
            (
                f
                for f in flushes
                if f["t"] == entry["t"] and f["at"] >= entry["at"] and f["m"] >= entry["m"]
            ),
            None,
        )
        # Or a later message's push that carried what the window held, before that flush: the
        # window's first @mention is sent at once. (Not any later push: fan-outs run
        # concurrently, so a later message can open the window with a push of its own alone.)
        later = next(
            (
                p
                for p in pushed
                if p["t"] == entry["t"]
                and p.get("k") == CARRIES_HELD
                and p["m"] > entry["m"]
                and p["at"] - entry["at"] <= window_ms
                and (flush is None or p["at"] <= flush["at"])
            ),
            None,
        )
        if later is not None:
            found["carried_by"] = found["_push"] = later["m"]
        elif flush is not None and flush["d"] != "pushed":
            found.update(decision=flush["d"], rule=flush.get("r"), detail=flush.get("k"))
        elif flush is not None:
            found["carried_by"] = found["_push"] = flush["m"]
        elif read_up_to.get(entry["t"], 0) >= entry["m"]:
            found["decision"] = "read_first"  # reading ended the window: nothing was pushed
    return found


def _attach_deliveries(user_id: uuid.UUID, answer: list[dict[str, Any]]) -> None:
    """Each pushed decision's devices and how the push ended on each (the push history); a
    push that failed on every device turns the decision into ``failed``."""
    pushed = {d["_push"] for d in answer if d["_push"] is not None}
    if not pushed:
        for d in answer:
            del d["_push"]
        return
    rows = db.session.execute(
        select(PushRecord, PushSubscription.user_agent)
        .outerjoin(PushSubscription, PushSubscription.id == PushRecord.subscription_id)
        .where(PushRecord.user_id == user_id, PushRecord.message_id.in_(pushed))
        .order_by(PushRecord.id)
    ).all()
    of: dict[int, list[dict[str, Any]]] = {}
    for record, label in rows:
        of.setdefault(record.message_id, []).append(
            {
                "device_id": str(record.subscription_id),
                "channel": record.channel,
                "device_label": label,
                "push_service": record.push_service,
                "outcome": record.outcome,
                "status": record.status_code,
                "reason": record.reason,
            }
        )
    for d in answer:
        deliveries = of.get(d.pop("_push"), [])
        d["deliveries"] = deliveries
        if deliveries and all(x["outcome"] != "delivered" for x in deliveries):
            d["decision"] = "failed"
