"""The APNs provider token: an ES256 JWT (``kid`` = key id, ``iss`` = team, ``iat`` = now).

Apple rejects a token older than an hour (``ExpiredProviderToken``) and answers 429
``TooManyProviderTokenUpdates`` to a provider that re-signs more often than once per 20
minutes, so one token is shared by every request of the process: re-signed when older than 50
minutes, and after a 403 only if the rejected token is at least 20 minutes old (a younger one
was refused for another reason: a wrong key or team, a skewed clock; signing again won't help).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

REFRESH_AGE = 50 * 60  # seconds: re-sign before Apple's one hour runs out
MIN_REFRESH_INTERVAL = 20 * 60  # seconds: Apple's floor between two tokens


def load_key(pem: bytes | str) -> ec.EllipticCurvePrivateKey:
    """The .p8 key Apple issues (PKCS#8 PEM, P-256); ``ValueError`` never echoes the key."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ValueError("APNs key must be a PEM (.p8) EC private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("APNs key must be a P-256 EC private key")
    return key


class ProviderToken:
    """The current provider token, shared by every thread (or greenlet) of a channel."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey | bytes | str,
        key_id: str,
        team_id: str,
        *,
        clock: Callable[[], float] = time.time,
        refresh_age: float = REFRESH_AGE,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
    ) -> None:
        if not key_id or not team_id:
            raise ValueError("APNs key id and team id are required")
        self._key = key if isinstance(key, ec.EllipticCurvePrivateKey) else load_key(key)
        self.key_id = key_id
        self.team_id = team_id
        self._clock = clock
        self._refresh_age = refresh_age
        self._min_interval = min_refresh_interval
        self._lock = threading.Lock()
        self._current: tuple[str, float] | None = None  # (token, issued at), swapped whole
        self.signed = 0  # tokens signed so far

    def get(self) -> str:
        """The token to send now, signed anew only when the current one is too old."""
        current = self._current
        if current is not None and self._clock() - current[1] < self._refresh_age:
            return current[0]
        with self._lock:
            current = self._current
            if current is not None and self._clock() - current[1] < self._refresh_age:
                return current[0]
            return self._sign()

    def refresh_after_rejection(self, rejected: str) -> str | None:
        """APNs refused ``rejected`` (expired or invalid): the token to retry with, or None.

        Another request may have replaced it already (retry with that one); otherwise it is
        replaced only if it is at least ``min_refresh_interval`` old.
        """
        with self._lock:
            current = self._current
            if current is not None and current[0] != rejected:
                return current[0]
            if current is not None and self._clock() - current[1] < self._min_interval:
                return None
            return self._sign()

    def _sign(self) -> str:
        """Called with the lock held."""
        now = self._clock()
        token = jwt.encode(
            {"iss": self.team_id, "iat": int(now)},
            self._key,
            algorithm="ES256",
            headers={"kid": self.key_id},
        )
        self._current = (token, now)
        self.signed += 1
        return token
