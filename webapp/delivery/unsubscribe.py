"""Signed one-click unsubscribe links for missed-message emails.

The link itself is the credential (no sign-in from a mail client), so it carries the user id
signed with ``EMAIL_LINK_SECRET`` (itsdangerous, with a salt of its own so no other signed
value of the app can pass for it). It does not expire: an old email's link must keep working,
and all it can do is turn that user's emails off. Rotating the secret voids every link sent.
"""

from __future__ import annotations

import uuid

from itsdangerous import BadData, URLSafeSerializer

from webapp.errors import InvalidInput
from webapp.platform import context

SALT = "beacon-email-unsubscribe"
MAX_TOKEN_LENGTH = 200  # a signed UUID is about 70 characters


def _serializer() -> URLSafeSerializer | None:
    secret = context.settings().email_link_secret
    return URLSafeSerializer(secret, salt=SALT) if secret else None


def token_for(user_id: uuid.UUID) -> str:
    serializer = _serializer()
    if serializer is None:
        raise RuntimeError("EMAIL_LINK_SECRET is not set: unsubscribe links cannot be signed")
    return serializer.dumps(str(user_id))


def user_from_token(token: str | None) -> uuid.UUID:
    """The user a token was signed for; ``InvalidInput("invalid_token")`` for anything else
    (without EMAIL_LINK_SECRET no token is valid)."""
    invalid = InvalidInput("invalid_token", "this unsubscribe link is not valid")
    serializer = _serializer()
    if serializer is None or not token or len(token) > MAX_TOKEN_LENGTH:
        raise invalid
    try:
        return uuid.UUID(serializer.loads(token))
    except (BadData, ValueError, TypeError, AttributeError):
        raise invalid from None


def unsubscribe_url(user_id: uuid.UUID) -> str:
    base = context.settings().app_base_url.rstrip("/")
    return f"{base}/api/email/unsubscribe?token={token_for(user_id)}"
