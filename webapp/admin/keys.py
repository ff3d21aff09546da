"""Service keys: how a product's backend (not a user) authenticates to ``/api/admin``.

A key is ``bk_`` and 256 random bits; only its SHA-256 is stored (a slow hash buys nothing
against a key nobody can guess), so it is shown once, when created. Keys are told from user
JWTs by that prefix: a JWT is refused on the admin routes and a key on the user routes, each
with 403, so that neither credential is ever tried as the other.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import g, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from webapp.auth import SERVICE_KEY_PREFIX, bearer_token, is_service_key
from webapp.errors import Forbidden, InvalidInput, Unauthorized
from webapp.extensions import db
from webapp.models import API_KEY_SCOPES, ApiKey, isoformat, utcnow
from webapp.platform import context, rate_limit

MAX_KEY_LENGTH = 128
# last_used_at is written at most this often per key (not on every request).
USED_RESOLUTION = timedelta(minutes=1)

F = TypeVar("F", bound=Callable[..., Any])


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(name: str, scope: str) -> str:
    """Store a new key named ``name`` and return it (the only time it is seen)."""
    if not 1 <= len(name) <= 64 or not name.isprintable() or name != name.strip():
        raise InvalidInput("invalid_name", "a key name is 1-64 printable characters")
    if scope not in API_KEY_SCOPES:
        raise InvalidInput("invalid_scope", f"scope must be one of {', '.join(API_KEY_SCOPES)}")
    key = SERVICE_KEY_PREFIX + secrets.token_urlsafe(32)
    db.session.add(ApiKey(name=name, scope=scope, key_hash=_digest(key), prefix=key[:10]))
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise InvalidInput("name_taken", f"a key named {name!r} exists", status=409) from None
    return key


def revoke(name: str) -> bool:
    """Delete the key named ``name``; False when there is none. Takes effect on the next
    request (keys are looked up on every request, never cached)."""
    key = db.session.execute(select(ApiKey).where(ApiKey.name == name)).scalar_one_or_none()
    if key is None:
        return False
    db.session.delete(key)
    db.session.commit()
    return True


def list_keys() -> list[dict[str, Any]]:
    keys = db.session.execute(select(ApiKey).order_by(ApiKey.name)).scalars()
    return [
        {
            "name": k.name,
            "scope": k.scope,
            "prefix": k.prefix,
            "created_at": isoformat(k.created_at),
            "last_used_at": isoformat(k.last_used_at),
        }
        for k in keys
    ]


def authenticate(token: str | None) -> ApiKey:
    """The key a bearer token is, or a refusal: 401 without a valid key, 403 for a user's
    JWT (admin routes take service keys only)."""
    if not token:
        raise Unauthorized("missing_key", "a service key is required (Authorization: Bearer)")
    if not is_service_key(token):
        raise Forbidden(
            "service_key_required", "the integration API takes service keys, not user tokens"
        )
    if len(token) > MAX_KEY_LENGTH:
        raise Unauthorized("invalid_key", "the service key is not valid")
    key = db.session.execute(
        select(ApiKey).where(ApiKey.key_hash == _digest(token))
    ).scalar_one_or_none()
    if key is None:
        raise Unauthorized("invalid_key", "the service key is not valid")
    return key


def _touch(key: ApiKey) -> None:
    now = utcnow()
    last = key.last_used_at
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=now.tzinfo)
    if last is None or now - last >= USED_RESOLUTION:
        key.last_used_at = now
        db.session.commit()


def require_key(scope: str) -> Callable[[F], F]:
    """REST decorator: a service key of ``scope`` (an ``admin`` key may do everything),
    rate-limited per key (``RATE_LIMIT_ADMIN``); the key is ``g.api_key``."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = authenticate(bearer_token(request.headers))
            if key.scope != "admin" and key.scope != scope:
                raise Forbidden("insufficient_scope", f"this route needs a key of scope {scope!r}")
            rate_limit.check("admin", key.id, context.settings().rate_limit_admin)
            _touch(key)
            g.api_key = key
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
