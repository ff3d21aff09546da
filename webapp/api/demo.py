"""The browser demo: the page at ``/``, its service worker, and a development-only login.

The page and the service worker are static files in ``webapp/static`` (the app's ``/static``
route serves the rest). ``DEV_LOGIN=1`` adds two endpoints that let anyone become any user —
for a laptop demo and the browser tests only; with it off (the default) they answer 404. With
``DEV_MAILBOX`` too, the page shows the caller's missed-message emails from the Maildir a local
SMTP sink writes, so the demo needs no real mail server.
"""

from __future__ import annotations

import email.policy
import email.utils
import logging
import mailbox
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from flask import Blueprint, g, jsonify, request, send_from_directory
from sqlalchemy import or_, select

from webapp.api.body import json_body
from webapp.auth import issue_token, require_user
from webapp.errors import InvalidInput, NotFound
from webapp.extensions import db
from webapp.models import User
from webapp.platform import context
from webapp.platform.validation import require_object
from webapp.presence.user_status import user_status_payload

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DEV_TOKEN_TTL = 12 * 3600
MAX_DEV_USERS = 200
MAX_DEV_EMAILS = 10

# The page loads nothing from other origins: scripts, styles and images are all ours.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

bp = Blueprint("demo", __name__)


_warned = False


def _warn_dev_login_once() -> None:
    """One loud warning per process, when a development endpoint is first used."""
    global _warned
    if _warned:
        return
    _warned = True
    # The settings loader refuses DEV_LOGIN on an address that is not loopback.
    log.warning(
        "DEV_LOGIN is on: /api/dev/token gives anyone a token for any user on this machine. "
        "Never enable it in production."
    )


def _no_cache(response):  # type: ignore[no-untyped-def]
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
def index():
    """The demo page (``?room=<id>&topic=<id>`` opens a topic; push notifications link here)."""
    response = send_from_directory(STATIC_DIR, "index.html", max_age=0)
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return _no_cache(response)


@bp.get("/sw.js")
def service_worker():
    """Served from the root so that its scope is the whole origin."""
    response = send_from_directory(STATIC_DIR, "sw.js", mimetype="text/javascript", max_age=0)
    response.headers["Service-Worker-Allowed"] = "/"
    return _no_cache(response)


def _require_dev_login() -> None:
    settings = context.settings()
    if not settings.dev_login:
        raise NotFound("not_found", "development login is disabled (set DEV_LOGIN=1 to enable it)")
    _warn_dev_login_once()


@bp.get("/api/dev/users")
def dev_users():
    """Users to pick from (development only), with the fields of ``user_status_change``.

    At most ``MAX_DEV_USERS``, online and recently seen first; ``?q=`` filters by username or
    display name, and ``truncated`` says whether more users matched.
    """
    _require_dev_login()
    query = select(User).where(User.deleted_at.is_(None))
    q = (request.args.get("q") or "").strip()[:64]
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(
                User.username.ilike(pattern, escape="\\"),
                User.display_name.ilike(pattern, escape="\\"),
            )
        )
    query = query.order_by(
        User.is_online.desc(), User.last_seen_at.desc().nulls_last(), User.created_at.desc()
    )
    rows = list(db.session.execute(query.limit(MAX_DEV_USERS + 1)).scalars())
    return jsonify(
        {
            "users": [user_status_payload(u) for u in rows[:MAX_DEV_USERS]],
            "truncated": len(rows) > MAX_DEV_USERS,
        }
    )


@bp.post("/api/dev/token")
def dev_token():
    """``{"username"}`` -> a signed JWT for that user (development only)."""
    _require_dev_login()
    data = require_object(json_body(), allowed={"username"})
    username = data.get("username")
    if not isinstance(username, str) or not 1 <= len(username) <= 64:
        raise InvalidInput("invalid_username", "username must be a string of 1-64 characters")
    user = db.session.execute(
        select(User).where(User.username == username, User.deleted_at.is_(None))
    ).scalar_one_or_none()
    if user is None:
        raise NotFound("user_not_found", f"no user named {username!r}")
    token = issue_token(context.settings(), user.id, DEV_TOKEN_TTL)
    return jsonify({"token": token, "expires_in": DEV_TOKEN_TTL, "user": user_status_payload(user)})


def _sent_at(headers: Message) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(str(headers["Date"]))
    except (TypeError, ValueError, IndexError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _summary(message: EmailMessage) -> dict[str, Any]:
    sent_at = _sent_at(message)
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    unsubscribe = message["List-Unsubscribe"]
    return {
        "subject": str(message["Subject"] or ""),
        "from": str(message["From"] or ""),
        "to": str(message["To"] or ""),
        "date": sent_at.isoformat() if sent_at else None,
        "text": text.get_content() if text is not None else None,
        "html": html.get_content() if html is not None else None,
        "list_unsubscribe": str(unsubscribe) if unsubscribe is not None else None,
    }


def mailbox_emails(path: str, address: str, limit: int = MAX_DEV_EMAILS) -> list[dict[str, Any]]:
    """The newest ``limit`` messages of a Maildir addressed to ``address`` (any case), newest
    first by their Date, then by delivery (a Date has whole seconds); a missing Maildir holds
    none. Every message is read: a development mailbox is small."""
    try:
        folder = mailbox.Maildir(path, create=False)
        keys = folder.keys()
    except (mailbox.NoSuchMailboxError, FileNotFoundError):
        return []
    address = address.lower()
    found: list[tuple[datetime, float, str]] = []
    for key in keys:
        try:
            entry = folder.get_message(key)  # with its delivery time
        except KeyError:  # removed meanwhile
            continue
        recipients = email.utils.getaddresses([str(v) for v in entry.get_all("To", [])])
        if any(addr.lower() == address for _, addr in recipients):
            sent_at = _sent_at(entry) or datetime.min.replace(tzinfo=UTC)
            found.append((sent_at, entry.get_date(), key))
    found.sort(reverse=True)
    parser = BytesParser(policy=email.policy.default)
    emails = []
    for _, _, key in found[:limit]:
        try:
            emails.append(_summary(parser.parsebytes(folder.get_bytes(key))))
        except KeyError:
            continue
    return emails


@bp.get("/api/demo/emails")
@require_user
def dev_emails():
    """The caller's latest missed-message emails, newest first (development only: the Maildir
    at ``DEV_MAILBOX`` a local SMTP sink writes; messages to the caller's email address)."""
    _require_dev_login()
    settings = context.settings()
    if not settings.dev_mailbox:
        raise NotFound("not_found", "there is no development mailbox (set DEV_MAILBOX)")
    user = g.user
    emails = mailbox_emails(settings.dev_mailbox, user.email) if user.email else []
    return jsonify({"emails": emails, "address": user.email})
