"""Outgoing webhooks: the hooks a product's backend registers, and one delivery to one hook.

A hook's URL is chosen by an integrator and a worker POSTs to it, so it gets the SSRF guard of
push endpoints (``webapp.platform.outbound``): the static checks when it is stored and again
before each send, and the check of the address each connection actually reached (a refused
address is never sent a byte). Each request is bounded by one deadline, ``WEBHOOK_TIMEOUT``,
and runs in a worker of queue ``webhooks``: a receiver that hangs holds up no one else.

Every request is signed: ``Beacon-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<body>")>``, and carries the event's ``id`` (also in ``Beacon-Event-Id``) for the receiver
to de-duplicate by: the id stays the same on every retry. A 2xx answer is delivered; 429, 5xx
and network errors are retried like pushes (``PUSH_MAX_RETRIES``, backoff with jitter, the
worker decides); anything else fails at once. A hook whose deliveries failed
``WEBHOOK_DISABLE_AFTER`` times in a row (each after its retries) is disabled until it is
enabled again; a success resets the count.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import case, select, update

from webapp import metrics
from webapp.errors import InvalidInput, NotFound
from webapp.extensions import db
from webapp.models import Webhook, isoformat, utcnow
from webapp.platform import context, events
from webapp.platform.outbound.addresses import TargetError, check_url
from webapp.platform.outbound.http import (
    ForbiddenAddressError,
    Pools,
    RequestError,
    parse_retry_after,
    parse_target,
)
from webapp.redis_client import get_redis

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
MAX_ERROR_CHARS = 300  # webhooks.last_error
POOL_MAXSIZE = 4  # idle keep-alive connections per receiver origin and worker process

DeliveryOutcome = Literal["delivered", "retry", "failed", "skipped"]


# -- the hooks -------------------------------------------------------------------------------
def hook_payload(hook: Webhook, *, with_secret: bool = False) -> dict[str, Any]:
    """What the API shows of a hook; the secret only when it is created."""
    payload: dict[str, Any] = {
        "id": str(hook.id),
        "url": hook.url,
        "events": hook.events.split(),
        "enabled": hook.disabled_at is None,
        "created_at": isoformat(hook.created_at),
        "consecutive_failures": hook.consecutive_failures,
        "last_success_at": isoformat(hook.last_success_at),
        "last_failure_at": isoformat(hook.last_failure_at),
        "last_error": hook.last_error,
        "disabled_at": isoformat(hook.disabled_at),
    }
    if with_secret:
        payload["secret"] = hook.secret
    return payload


def parse_events(value: Any) -> list[str]:
    if value is None:
        raise InvalidInput("missing_field", "events is required")
    if not isinstance(value, list) or not value:
        raise InvalidInput("invalid_events", "events must be a non-empty list of event names")
    for name in value:
        if not isinstance(name, str) or name not in events.EVENTS:
            shown = repr(name)[:60]
            raise InvalidInput(
                "invalid_events", f"unknown event {shown}; events are {', '.join(events.EVENTS)}"
            )
    if len(set(value)) != len(value):
        raise InvalidInput("invalid_events", "events must not repeat an event")
    return value


def parse_url(value: Any) -> str:
    if value is None:
        raise InvalidInput("missing_field", "url is required")
    try:
        check_url(value, context.settings().webhook_allowed_hosts, name="url")
    except TargetError as exc:
        raise InvalidInput(exc.code, exc.message) from None
    return value


def create(url: str, names: list[str]) -> dict[str, Any]:
    """Register a hook (``url`` and ``names`` parsed by ``parse_url`` and ``parse_events``);
    its payload with the secret (shown only here)."""
    hook = Webhook(
        url=url,
        events=" ".join(names),
        secret=SECRET_PREFIX + secrets.token_urlsafe(32),
        created_at=utcnow(),
        consecutive_failures=0,
    )
    db.session.add(hook)
    db.session.commit()
    events.invalidate()
    return hook_payload(hook, with_secret=True)


def list_hooks() -> list[dict[str, Any]]:
    hooks = db.session.execute(select(Webhook).order_by(Webhook.created_at, Webhook.id)).scalars()
    return [hook_payload(h) for h in hooks]


def _find(hook_id: uuid.UUID) -> Webhook:
    hook = db.session.get(Webhook, hook_id)
    if hook is None:
        raise NotFound("webhook_not_found", "no webhook with that id")
    return hook


def get(hook_id: uuid.UUID) -> dict[str, Any]:
    return hook_payload(_find(hook_id))


def delete(hook_id: uuid.UUID) -> None:
    """Delete a hook; deliveries already enqueued for it find nothing and are dropped."""
    db.session.delete(_find(hook_id))
    db.session.commit()
    events.invalidate()


def set_enabled(hook_id: uuid.UUID, enabled: bool) -> dict[str, Any]:
    """``True`` sends to a disabled hook again, its failure count reset; ``False`` stops
    sending to it."""
    hook = _find(hook_id)
    if enabled and hook.disabled_at is not None:
        hook.disabled_at = None
        hook.consecutive_failures = 0
    elif not enabled and hook.disabled_at is None:
        hook.disabled_at = utcnow()
    db.session.commit()
    events.invalidate()
    return hook_payload(hook)


def subscribers(event: str) -> list[str]:
    """The ids of the enabled hooks that subscribe to ``event``."""
    rows = db.session.execute(
        select(Webhook.id, Webhook.events).where(Webhook.disabled_at.is_(None))
    ).all()
    return [str(r.id) for r in rows if event in r.events.split()]


# -- one delivery ----------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Beacon-Signature`` header of ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass(frozen=True)
class Result:
    """How one attempt ended: ``retry`` (after at least ``retry_after`` seconds, if the
    receiver said), or for good: ``delivered``, ``failed``, ``skipped`` (hook gone or
    disabled)."""

    outcome: DeliveryOutcome
    retry_after: float | None = None


@dataclass(frozen=True)
class _Answer:
    kind: Literal["delivered", "retry", "failed"]
    reason: str
    retry_after: float | None = None


_pools: Pools | None = None
_pools_lock = threading.Lock()


def _pools_of_process() -> Pools:
    """The worker's connection pools to receivers (guarded unless allow-listed)."""
    global _pools
    if _pools is None:
        with _pools_lock:
            if _pools is None:
                s = context.settings()
                _pools = Pools(
                    maxsize=POOL_MAXSIZE,
                    timeout=s.webhook_timeout,
                    allowed_hosts=s.webhook_allowed_hosts,
                )
    return _pools


def deliver(hook_id: str, event: dict[str, Any], *, final: bool) -> Result:
    """POST ``event`` to the hook and book the result; ``final``: no retry follows, so a
    transient failure counts as a failed delivery."""
    hook = db.session.execute(
        select(Webhook.url, Webhook.secret, Webhook.disabled_at).where(
            Webhook.id == uuid.UUID(hook_id)
        )
    ).first()
    db.session.rollback()  # no transaction held open across the request
    if hook is None or hook.disabled_at is not None:
        why = "deleted" if hook is None else "disabled"
        log.info("webhook %s event %s skipped: the hook is %s", hook_id, event["id"], why)
        return _counted(Result("skipped"))
    answer = _post(hook.url, hook.secret, event)
    if answer.kind == "delivered":
        _book_success(hook_id)
        result = Result("delivered")
    elif answer.kind == "retry" and not final:
        result = Result("retry", answer.retry_after)
    else:
        _book_failure(hook_id, answer.reason)
        result = Result("failed")
    log.info(
        "webhook %s event %s type=%s outcome=%s reason=%s",
        hook_id,
        event["id"],
        event["type"],
        result.outcome,
        answer.reason,
    )
    return _counted(result)


def _post(url: str, secret: str, event: dict[str, Any]) -> _Answer:
    try:
        check_url(url, context.settings().webhook_allowed_hosts, name="url")
        target = parse_target(url)
    except (TargetError, ValueError) as exc:
        return _Answer("failed", f"refused: {exc}")
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "beacon-webhooks/1",
        "Beacon-Event": event["type"],
        "Beacon-Event-Id": event["id"],
        "Beacon-Signature": sign(secret, int(time.time()), body),
    }
    try:
        answer = _pools_of_process().post(target, headers, body)
    except ForbiddenAddressError:
        return _Answer("failed", ForbiddenAddressError.reason)
    except RequestError as exc:
        return _Answer("retry", str(exc))
    status = f"{answer.status} {answer.reason}".strip()
    if 200 <= answer.status < 300:
        return _Answer("delivered", status)
    if answer.status == 429 or 500 <= answer.status < 600:
        return _Answer("retry", status, parse_retry_after(answer.retry_after, time.time()))
    if 300 <= answer.status < 400:
        return _Answer("failed", f"{answer.status} unexpected redirect (not followed)")
    return _Answer("failed", status)


def _book_success(hook_id: str) -> None:
    db.session.execute(
        update(Webhook)
        .where(Webhook.id == uuid.UUID(hook_id))
        .values(consecutive_failures=0, last_success_at=utcnow())
    )
    db.session.commit()


def _book_failure(hook_id: str, reason: str) -> None:
    """One more failure in a row; at ``WEBHOOK_DISABLE_AFTER`` the hook is disabled (in the
    same statement, so concurrent failures disable it once)."""
    now = utcnow()
    failures = Webhook.consecutive_failures + 1
    limit = context.settings().webhook_disable_after
    row = db.session.execute(
        update(Webhook)
        .where(Webhook.id == uuid.UUID(hook_id))
        .values(
            consecutive_failures=failures,
            last_failure_at=now,
            last_error=reason[:MAX_ERROR_CHARS],
            disabled_at=case(
                (Webhook.disabled_at.is_(None) & (failures >= limit), now),
                else_=Webhook.disabled_at,
            ),
        )
        .returning(Webhook.consecutive_failures, Webhook.disabled_at)
    ).first()
    db.session.commit()
    if row is not None and row.consecutive_failures == limit and row.disabled_at is not None:
        log.warning(
            "webhook %s disabled after %d failed deliveries in a row (last: %s)",
            hook_id,
            row.consecutive_failures,
            reason,
        )


def _counted(result: Result) -> Result:
    metrics.record_webhook(get_redis(context.settings().redis_url), result.outcome)
    return result
