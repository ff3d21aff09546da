"""JWT issuing and verification for Socket.IO connections and REST calls."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import jwt
from flask import current_app, g, request

from config import Settings
from webapp.errors import Forbidden, Unauthorized
from webapp.extensions import db
from webapp.models import User

F = TypeVar("F", bound=Callable[..., Any])

# Service keys of the integration API start with this (webapp/admin/keys.py); no JWT does.
SERVICE_KEY_PREFIX = "bk_"


def is_service_key(token: str | None) -> bool:
    return token is not None and token.startswith(SERVICE_KEY_PREFIX)


def issue_token(settings: Settings, user_id: uuid.UUID, ttl: int | None = None) -> str:
    """Sign a token whose ``sub`` is the user id (used by the CLI and tests)."""
    key = settings.jwt_signing_key
    if not key:
        raise RuntimeError("no JWT signing key configured (JWT_SECRET or JWT_PRIVATE_KEY)")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "iat": now,
        "nbf": now,
        "exp": now + (ttl if ttl is not None else settings.jwt_default_ttl),
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: its user and when it expires (``exp``, Unix seconds)."""

    user_id: uuid.UUID
    expires_at: int


def decode_token(settings: Settings, token: object) -> TokenClaims:
    """Verify a token's signature and times, or raise ``Unauthorized``; no database lookup.

    Only the configured algorithm is accepted, which rules out ``none`` and HS/RS confusion.
    """
    if not isinstance(token, str) or not token or len(token) > 8192:
        raise Unauthorized("missing_token", "a bearer token is required")
    if is_service_key(token):
        raise Forbidden("user_token_required", "this takes a user's token, not a service key")
    key = settings.jwt_verify_key
    if not key:
        raise Unauthorized("auth_unconfigured", "the server has no JWT key configured")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
            options={"require": ["sub", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token_expired", "the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise Unauthorized("token_not_yet_valid", "the token is not valid yet") from None
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid_token", f"the token is invalid: {exc}") from None
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError:
        raise Unauthorized("invalid_token", "the token subject is not a user id") from None
    # PyJWT checked that ``exp`` is an integer (a number or its text) before accepting it.
    return TokenClaims(user_id, int(claims["exp"]))


def token_user(claims: TokenClaims) -> User:
    """The user a verified token names, or ``Unauthorized("unknown_user")``."""
    user = db.session.get(User, claims.user_id)
    if user is None or user.deleted_at is not None:
        raise Unauthorized("unknown_user", "the token's user does not exist")
    return user


def verify_token(settings: Settings, token: object) -> User:
    """Return the user a token belongs to, or raise ``Unauthorized``."""
    return token_user(decode_token(settings, token))


def bearer_token(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer`` header (REST takes no query tokens: logs)."""
    header = headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def require_user(view: F) -> F:
    """REST decorator: authenticate the caller and expose it as ``g.user``."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings: Settings = current_app.extensions["beacon_settings"]
        g.user = verify_token(settings, bearer_token(request.headers))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
