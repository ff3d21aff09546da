"""A browser's ``PushSubscription``: its keys and their validation.

The endpoint is a URL a user handed us, and the push worker will POST to it: it gets the
checks of every such URL (``webapp.platform.outbound.addresses``: https, public addresses,
``PUSH_ALLOWED_HOSTS`` for a local test push service) here, on subscribe, and again in the
worker right before sending (``WebPushChannel``, with DNS) and when it connects (the peer
address, ``webapp.platform.outbound.http``).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from webapp.platform.outbound.addresses import TargetError, check_url

__all__ = [
    "SubscriptionError",
    "SubscriptionKeys",
    "validate_subscription",
]

_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}\Z")


@dataclass(frozen=True)
class SubscriptionKeys:
    """What the browser's ``PushSubscription`` gives us (keys as base64url strings)."""

    endpoint: str
    p256dh: str
    auth: str

    def __repr__(self) -> str:
        # The endpoint and the auth secret together are a credential: keep them out of logs.
        return "SubscriptionKeys(endpoint=<redacted>, p256dh=<redacted>, auth=<redacted>)"


class SubscriptionError(ValueError):
    """A subscription we refuse; ``code`` is stable, ``message`` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"SubscriptionError({self.code!r}, {self.message!r})"


# -- keys ------------------------------------------------------------------------------------
def _decode_key(value: object, name: str, length: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise SubscriptionError(f"invalid_{name}", f"keys.{name} must be a non-empty string")
    if not _B64URL.match(value):
        raise SubscriptionError(
            f"invalid_{name}", f"keys.{name} must be base64url (A-Z a-z 0-9 - _, padding optional)"
        )
    bare = value.rstrip("=")
    if len(bare) % 4 == 1:
        raise SubscriptionError(f"invalid_{name}", f"keys.{name} is not valid base64url")
    try:
        raw = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except (binascii.Error, ValueError):
        raise SubscriptionError(f"invalid_{name}", f"keys.{name} is not valid base64url") from None
    if len(raw) != length:
        raise SubscriptionError(
            f"invalid_{name}", f"keys.{name} must decode to {length} bytes, got {len(raw)}"
        )
    return raw


def validate_subscription(data: object, allowed_hosts: tuple[str, ...]) -> SubscriptionKeys:
    """Check a ``PushSubscription.toJSON()`` object; return its keys or raise ``SubscriptionError``.

    The returned keys have their base64 padding removed, so the same subscription always
    compares (and deduplicates) equal; the endpoint is kept exactly as the browser gave it.
    """
    if not isinstance(data, dict):
        raise SubscriptionError("invalid_subscription", "subscription must be a JSON object")
    endpoint = data.get("endpoint")
    try:
        check_url(endpoint, allowed_hosts)
    except TargetError as exc:
        raise SubscriptionError(exc.code, exc.message) from None
    assert isinstance(endpoint, str)

    expiration = data.get("expirationTime")
    if expiration is not None and (
        isinstance(expiration, bool)
        or not isinstance(expiration, (int, float))
        or not math.isfinite(expiration)
    ):
        raise SubscriptionError("invalid_subscription", "expirationTime must be null or a number")

    keys = data.get("keys")
    if not isinstance(keys, dict):
        raise SubscriptionError("invalid_keys", "keys must be an object with p256dh and auth")
    p256dh = keys.get("p256dh")
    auth = keys.get("auth")
    point = _decode_key(p256dh, "p256dh", 65)
    if point[0] != 0x04:
        raise SubscriptionError("invalid_p256dh", "keys.p256dh must be an uncompressed P-256 point")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise SubscriptionError(
            "invalid_p256dh", "keys.p256dh is not a point on the P-256 curve"
        ) from None
    _decode_key(auth, "auth", 16)
    assert isinstance(p256dh, str) and isinstance(auth, str)
    return SubscriptionKeys(endpoint=endpoint, p256dh=p256dh.rstrip("="), auth=auth.rstrip("="))
