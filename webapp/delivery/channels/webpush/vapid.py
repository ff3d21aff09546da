"""VAPID (RFC 8292): the deployment's key pair, and the JWT each push service origin gets.

The JWT is signed once per origin and reused until it is within an hour of expiry (``exp`` 12 h
ahead, never more than 24 h; Apple asks for at most one refresh an hour), so the push service
verifies one signature per origin, not one per message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from webapp.delivery.channels.webpush.ece import CURVE

JWT_LIFETIME = 12 * 3600  # seconds; RFC 8292 allows at most 24 h
JWT_REFRESH_MARGIN = 3600  # re-sign when less than this is left
JWT_MAX_LIFETIME = 24 * 3600
_JWT_HEADER_B64 = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"ES256"}').rstrip(b"=").decode()


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: str) -> bytes:
    value = value.strip()
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _load_private_key(private_key: str) -> ec.EllipticCurvePrivateKey:
    """Accept the raw base64url scalar (what web-push tools print), PEM, or base64 DER."""
    if not isinstance(private_key, str) or not private_key.strip():
        raise ValueError("VAPID private key is empty")
    text = private_key.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        else:
            raw = b64url_decode("".join(text.split()))
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), CURVE)
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, binascii.Error, UnicodeError) as exc:
        # Never echo the key material in the message.
        raise ValueError(
            "VAPID private key must be a base64url 32-byte P-256 scalar or a PEM EC key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE.name:
        raise ValueError("VAPID private key must be a P-256 (prime256v1) EC key")
    return key


def _public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    return _b64url_encode(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def vapid_public_key_from_private(private_key: str) -> str:
    """Base64url uncompressed public point: the ``applicationServerKey`` browsers need."""
    return _public_key_b64(_load_private_key(private_key))


def generate_vapid_keypair() -> tuple[str, str]:
    """A new VAPID key pair as ``(private, public)``, both base64url without padding.

    The private key is the raw 32-byte scalar (what ``VAPID_PRIVATE_KEY`` expects), the public
    key the 65-byte uncompressed point (what ``PushManager.subscribe`` expects).
    """
    key = ec.generate_private_key(CURVE)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return _b64url_encode(scalar), _public_key_b64(key)


class Vapid:
    """The deployment's VAPID identity: signs ``Authorization`` headers, hashes Topic headers.

    Thread-safe; one per sender. Topic names are hashed with a key only this deployment knows,
    so the push service (which sees the ``Topic`` header in clear) learns nothing about rooms
    and topics.
    """

    def __init__(
        self, private_key: str, subject: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not subject.startswith(("mailto:", "https:")):
            raise ValueError("VAPID subject must be a mailto: or https: URL")
        self._key = _load_private_key(private_key)
        self.public_key = _public_key_b64(self._key)
        self._subject = subject
        self._clock = clock
        scalar = self._key.private_numbers().private_value.to_bytes(32, "big")
        self._topic_key = hashlib.sha256(b"beacon-web-push-topic\0" + scalar).digest()
        self._lock = threading.Lock()
        self._jwt_cache: dict[str, tuple[str, int]] = {}

    def header(self, origin: str) -> str:
        """``vapid t=<jwt>, k=<key>`` for ``origin``, re-signed only near expiry."""
        now = self._clock()
        entry = self._jwt_cache.get(origin)
        if entry is not None and JWT_REFRESH_MARGIN < entry[1] - now <= JWT_MAX_LIFETIME:
            return entry[0]
        with self._lock:
            entry = self._jwt_cache.get(origin)
            if entry is not None and JWT_REFRESH_MARGIN < entry[1] - now <= JWT_MAX_LIFETIME:
                return entry[0]
            exp = int(now) + JWT_LIFETIME
            token = self._sign_jwt({"aud": origin, "exp": exp, "sub": self._subject})
            header = f"vapid t={token}, k={self.public_key}"
            if len(self._jwt_cache) >= 1024:
                self._jwt_cache.clear()
            self._jwt_cache[origin] = (header, exp)
            return header

    def topic_header(self, topic: str) -> str:
        """The ``Topic`` header for a collapse key: 32 chars of base64url (RFC 8030 limit)."""
        digest = hmac.new(self._topic_key, topic.encode("utf-8"), hashlib.sha256).digest()
        return _b64url_encode(digest[:24])

    def _sign_jwt(self, claims: dict[str, object]) -> str:
        # Sorted compact claims: some push services (Chrome's) were picky about the JSON.
        body = _b64url_encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signing_input = f"{_JWT_HEADER_B64}.{body}"
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
