"""The one Web Push sender: aes128gcm payload encryption (RFC 8291) plus VAPID (RFC 8292).

Why not call ``pywebpush.webpush()`` per message: it rebuilds everything on every call — it
parses the VAPID key, signs a fresh ES256 JWT (which the push service must then verify again),
decodes the subscription key and, without a session, builds a new ``requests`` session and opens
a new TCP/TLS connection. None of that is needed per message; the only per-recipient work is
the encryption (a fresh ephemeral P-256 key, one ECDH, HKDF and AES-GCM: Web Push has no
multi-recipient send). So this module:

* encrypts with ``http_ece.encrypt`` and a fresh ephemeral key per message, generated with
  ``cryptography`` directly, and decodes each subscription's public key only once (cache);
* signs the VAPID JWT once per push-service origin and reuses it until it is within an hour of
  expiry (``exp`` 12 h ahead, never more than 24 h; Apple asks for at most one refresh an hour);
* sends over one pooled ``requests.Session`` per sender, always with a timeout, never following
  redirects (a redirect would let a push endpoint bounce the worker into the internal network),
  preparing requests itself because ``Session.request`` costs more than the exchange;
* maps the push service's answer to an outcome the worker acts on (delivered / expired / retry /
  rejected) and never puts the endpoint or the keys in the reason: together they are a
  credential that would let anyone push to that browser.

Where the time goes (bench/push_throughput.py): encryption is about a quarter of a push's CPU,
the HTTP exchange through requests/urllib3 most of the rest. ``send_many`` encrypts a batch
first (hot caches) and posts it from a small thread pool, so waiting for one answer overlaps
the next request.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import ipaddress
import json
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from typing import Literal
from urllib.parse import urlsplit

import http_ece
import requests
import urllib3
import urllib3.connection
import urllib3.exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from requests.adapters import HTTPAdapter

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "ForbiddenAddressError",
    "PushResult",
    "PushSender",
    "SubscriptionKeys",
    "backoff_delay",
    "generate_vapid_keypair",
    "vapid_public_key_from_private",
]

Outcome = Literal["delivered", "expired", "retry", "rejected"]

_CURVE = ec.SECP256R1()
# RFC 8291 section 4: push services must accept a 4096-byte body; that is 86 bytes of header
# (salt, record size, 65-byte key id), the payload, a 1-byte delimiter and a 16-byte tag.
MAX_PAYLOAD_BYTES = 3993
JWT_LIFETIME = 12 * 3600  # seconds; RFC 8292 allows at most 24 h
JWT_REFRESH_MARGIN = 3600  # re-sign when less than this is left
JWT_MAX_LIFETIME = 24 * 3600
URGENCIES = frozenset({"very-low", "low", "normal", "high"})
REASON_MAX_CHARS = 200
_BODY_READ_LIMIT = 4096  # never buffer more than this of a push service's answer
_KEY_CACHE_SIZE = 4096
_BATCH = 256  # send_many: messages encrypted ahead of posting
_JWT_HEADER_B64 = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"ES256"}').rstrip(b"=").decode()
_SAFE_URL = re.compile(r"https?://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+\Z")


@dataclass(frozen=True)
class SubscriptionKeys:
    """What the browser's ``PushSubscription`` gives us (keys as base64url strings)."""

    endpoint: str
    p256dh: str
    auth: str

    def __repr__(self) -> str:
        # The endpoint and the auth secret together are a credential: keep them out of logs.
        return "SubscriptionKeys(endpoint=<redacted>, p256dh=<redacted>, auth=<redacted>)"


@dataclass
class PushResult:
    """The push service's answer, reduced to what the worker decides on."""

    status: int | None
    outcome: Outcome
    retry_after: float | None = None
    reason: str = ""


# -- keys ------------------------------------------------------------------------------------
def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: str) -> bytes:
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
            raw = _b64url_decode("".join(text.split()))
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), _CURVE)
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, binascii.Error, UnicodeError) as exc:
        # Never echo the key material in the message.
        raise ValueError(
            "VAPID private key must be a base64url 32-byte P-256 scalar or a PEM EC key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _CURVE.name:
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
    key = ec.generate_private_key(_CURVE)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return _b64url_encode(scalar), _public_key_b64(key)


# -- retry policy ----------------------------------------------------------------------------
def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    Exponential backoff with full jitter (uniform in ``[0, min(cap, base * 2**attempt))``) so
    that many workers hit by the same outage do not retry in lockstep. A push service's
    ``Retry-After`` is a floor: we never come back earlier than it asked. The result is capped
    at ``cap``; a caller that must not retry earlier than a longer Retry-After should give up
    instead.
    """
    cap = max(0.0, float(cap))
    exponent = min(max(int(attempt), 0), 62)
    ceiling = min(cap, max(0.0, float(base)) * (2.0**exponent))
    delay = rng() * ceiling
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, float(retry_after))
    return min(max(delay, 0.0), cap)


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


# -- the sender ------------------------------------------------------------------------------
def _check_options(ttl: int, urgency: str) -> None:
    if urgency not in URGENCIES:
        raise ValueError(f"urgency must be one of {sorted(URGENCIES)}")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise ValueError("ttl must be a non-negative integer")


def _origin(endpoint: str) -> str:
    """``scheme://host[:port]`` of an endpoint: the VAPID ``aud`` and the JWT cache key."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("https", "http") or not host:
        raise ValueError("endpoint is not an http(s) URL")
    port = parts.port  # ValueError on a bad port
    if ":" in host:
        host = f"[{host}]"
    if port is None or (scheme, port) in (("https", 443), ("http", 80)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _secrets_of(sub: SubscriptionKeys) -> list[str]:
    """Strings that must never appear in a reason: the endpoint, its path and tokens, the keys."""
    found = {sub.endpoint, sub.p256dh, sub.auth}
    rest = sub.endpoint.split("://", 1)[-1].partition("/")[2]
    if rest:
        found.add("/" + rest)
        found.add(rest)
        found.update(t for t in re.split(r"[/?&=#;]", rest) if len(t) >= 12)
    return sorted((s for s in found if s), key=len, reverse=True)


# -- connection guard ------------------------------------------------------------------------
class ForbiddenAddressError(urllib3.exceptions.NewConnectionError):
    """A push endpoint's host resolved, at connect time, to an address we must not talk to."""

    reason = "endpoint host resolved to a non-public address at connect time; nothing sent"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is anywhere in the chain requests and urllib3 wrap errors in."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        stack.extend(current.args)
        stack.extend((getattr(current, "reason", None), current.__cause__, current.__context__))
    return False


def _guarded_pool_classes(allowed_hosts: tuple[str, ...]) -> dict[str, type]:
    """urllib3 pools whose new connections check the peer address before any byte is sent."""
    from webapp.services.push_validation import host_is_allowlisted, is_public_address

    def check(conn: urllib3.connection.HTTPConnection, sock: socket.socket) -> None:
        if host_is_allowlisted(conn.host, conn.port or 0, allowed_hosts):
            return
        try:
            peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
        except (OSError, ValueError, IndexError):
            peer = None
        if peer is None or not is_public_address(peer):
            sock.close()
            raise ForbiddenAddressError(conn, ForbiddenAddressError.reason)

    class GuardedHTTPConnection(urllib3.connection.HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            check(self, sock)
            return sock

    class GuardedHTTPSConnection(urllib3.connection.HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            check(self, sock)
            return sock

    class GuardedHTTPPool(urllib3.HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}


class _PushAdapter(HTTPAdapter):
    """requests' HTTPAdapter, optionally with connect-time address checks."""

    def __init__(self, allowed_hosts: tuple[str, ...] | None, **kwargs: object) -> None:
        self._allowed_hosts = allowed_hosts
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        allowed = getattr(self, "_allowed_hosts", None)  # absent after unpickling
        if allowed is not None:
            self.poolmanager.pool_classes_by_scheme = _guarded_pool_classes(allowed)


class PushSender:
    """Encrypts and delivers Web Push messages; one instance per worker process.

    Thread-safe: ``send`` may be called from several threads or greenlets at once. With
    ``allowed_hosts`` (``PUSH_ALLOWED_HOSTS``), every new connection is checked after it is
    made: if the address actually connected to is not public and the host is not allowlisted,
    nothing is sent. That closes the window ``check_endpoint_target`` leaves open between its
    DNS lookup and the HTTP client's (DNS rebinding). Not applied through an HTTP proxy, which
    is then the egress control.
    """

    def __init__(
        self,
        vapid_private_key: str,
        vapid_subject: str,
        *,
        timeout: float,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        pool_maxsize: int = 64,
        max_workers: int = 8,
        allowed_hosts: tuple[str, ...] | None = None,
    ) -> None:
        if not vapid_subject.startswith(("mailto:", "https:")):
            raise ValueError("VAPID subject must be a mailto: or https: URL")
        if not (0 < timeout < math.inf):
            raise ValueError("a finite positive timeout is required: hanging requests pile up")
        self._key = _load_private_key(vapid_private_key)
        self.public_key = _public_key_b64(self._key)
        self._subject = vapid_subject
        self._timeout = float(timeout)
        self._clock = clock
        self._max_workers = max(1, int(max_workers))
        # Topic names are hashed with a key only this deployment knows, so the push service
        # (which sees the Topic header in clear) learns nothing about our rooms and topics.
        scalar = self._key.private_numbers().private_value.to_bytes(32, "big")
        self._topic_key = hashlib.sha256(b"beacon-web-push-topic\0" + scalar).digest()

        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = _PushAdapter(
                allowed_hosts,
                pool_connections=16,  # distinct push-service origins kept
                pool_maxsize=max(pool_maxsize, self._max_workers),
                max_retries=0,  # retrying is the worker's job (with backoff)
            )
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        elif allowed_hosts is not None:
            raise ValueError("allowed_hosts guards connections of the sender's own session only")
        self.session = session
        # We call session.send() with a request we prepare ourselves (Session.request costs
        # more than the HTTP exchange), so apply the environment here, once: a CA bundle named
        # by REQUESTS_CA_BUNDLE, and "no proxies" when none are configured (resolving proxies
        # per request is slow). Configured proxies are still resolved per URL by requests.
        self._send_kwargs: dict[str, object] = {
            "timeout": self._timeout,
            "allow_redirects": False,  # a redirect could point the worker at internal hosts
            "stream": True,  # read at most _BODY_READ_LIMIT of the answer
        }
        if self._owns_session:
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:
                self._send_kwargs["verify"] = bundle
            if not requests.utils.getproxies():
                self._send_kwargs["proxies"] = {}

        self._lock = threading.Lock()
        self._jwt_cache: dict[str, tuple[str, int]] = {}
        self._key_cache: dict[tuple[str, str], tuple[ec.EllipticCurvePublicKey, bytes]] = {}
        self._executor: ThreadPoolExecutor | None = None

    # -- public API ----------------------------------------------------------------------------
    def send(
        self,
        sub: SubscriptionKeys,
        payload: bytes,
        *,
        ttl: int,
        urgency: str = "normal",
        topic: str | None = None,
    ) -> PushResult:
        """Encrypt ``payload`` for ``sub`` and deliver it; never raises for push failures.

        ``ttl`` is how long (seconds) the push service keeps the message for an offline
        browser; ``topic`` is any string, hashed into a collapse key (newer replaces older).
        """
        _check_options(ttl, urgency)
        prepared = self._prepare(sub, payload, ttl, urgency, topic)
        if isinstance(prepared, PushResult):
            return prepared
        return self._post(sub, *prepared)

    def send_many(
        self,
        messages: Iterable[tuple[SubscriptionKeys, bytes]],
        *,
        ttl: int,
        urgency: str = "normal",
        topic: str | None = None,
    ) -> list[PushResult]:
        """``send`` to many recipients; results in input order.

        Messages are encrypted in batches on the calling thread (hot caches), then posted by
        a small thread pool so that waiting for one push service answer overlaps the next
        request.
        """
        _check_options(ttl, urgency)
        items = list(messages)
        if len(items) <= 1 or self._max_workers == 1:
            return [self.send(s, p, ttl=ttl, urgency=urgency, topic=topic) for s, p in items]
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix="push-send"
                )
            executor = self._executor
        results: list[PushResult] = []
        for start in range(0, len(items), _BATCH):
            batch = [
                (sub, self._prepare(sub, payload, ttl, urgency, topic))
                for sub, payload in items[start : start + _BATCH]
            ]
            results.extend(executor.map(self._post_prepared, batch))
        return results

    def topic_header(self, topic: str) -> str:
        """The ``Topic`` header for a collapse key: 32 chars of base64url (RFC 8030 limit)."""
        digest = hmac.new(self._topic_key, topic.encode("utf-8"), hashlib.sha256).digest()
        return _b64url_encode(digest[:24])

    def close(self) -> None:
        """Stop the thread pool and, if we created it, close the HTTP session."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> PushSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _prepare(
        self, sub: SubscriptionKeys, payload: bytes, ttl: int, urgency: str, topic: str | None
    ) -> tuple[dict[str, str], bytes] | PushResult:
        """Headers and encrypted body for one push, or why it cannot be sent at all."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return PushResult(
                None, "rejected", None, f"payload too large ({len(payload)} > {MAX_PAYLOAD_BYTES})"
            )
        try:
            receiver, auth = self._receiver(sub)
        except (ValueError, TypeError, binascii.Error):
            return PushResult(None, "rejected", None, "invalid subscription keys")
        try:
            vapid = self._vapid_header(_origin(sub.endpoint))
        except ValueError:
            return PushResult(None, "rejected", None, "invalid endpoint URL")
        body = http_ece.encrypt(
            payload,
            private_key=ec.generate_private_key(_CURVE),  # ephemeral: one per message
            dh=receiver,
            auth_secret=auth,
            version="aes128gcm",
        )
        headers = {
            "Authorization": vapid,
            "TTL": str(ttl),
            "Urgency": urgency,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Accept-Encoding": "identity",
            "User-Agent": "beacon-push/1",
        }
        if topic is not None:
            headers["Topic"] = self.topic_header(topic)
        return headers, body

    def _post_prepared(
        self, item: tuple[SubscriptionKeys, tuple[dict[str, str], bytes] | PushResult]
    ) -> PushResult:
        sub, prepared = item
        return prepared if isinstance(prepared, PushResult) else self._post(sub, *prepared)

    def _receiver(self, sub: SubscriptionKeys) -> tuple[ec.EllipticCurvePublicKey, bytes]:
        """The subscription's decoded public key and auth secret, decoded once."""
        cache_key = (sub.p256dh, sub.auth)
        cached = self._key_cache.get(cache_key)
        if cached is not None:
            return cached
        point = _b64url_decode(sub.p256dh)
        auth = _b64url_decode(sub.auth)
        if len(point) != 65 or len(auth) != 16:
            raise ValueError("bad key length")
        public = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, point)
        with self._lock:
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.pop(next(iter(self._key_cache)))  # oldest first
            self._key_cache[cache_key] = (public, auth)
        return public, auth

    def _vapid_header(self, origin: str) -> str:
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

    def _sign_jwt(self, claims: dict[str, object]) -> str:
        # Sorted compact claims: some push services (Chrome's) were picky about the JSON.
        body = _b64url_encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signing_input = f"{_JWT_HEADER_B64}.{body}"
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _post(self, sub: SubscriptionKeys, headers: dict[str, str], body: bytes) -> PushResult:
        # Request(...).prepare() costs half an encryption; these steps are what it does for
        # a bytes body without auth, params or session cookies.
        request = requests.PreparedRequest()
        request.prepare_method("POST")
        if _SAFE_URL.match(sub.endpoint):
            request.url = sub.endpoint  # RFC 3986 characters only: prepare_url is a no-op
        else:
            try:
                request.prepare_url(sub.endpoint, None)
            except requests.RequestException:
                return PushResult(None, "rejected", None, "invalid endpoint URL")
        request.prepare_headers(headers)
        request.prepare_cookies(None)
        request.prepare_body(body, None)
        request.prepare_hooks(None)
        try:
            response = self.session.send(request, **self._send_kwargs)
            try:
                status = response.status_code
                # Reading to the end hands the connection back to the pool; a longer body is
                # cut off (and that connection dropped) rather than buffered.
                text = response.raw.read(_BODY_READ_LIMIT + 1)
            finally:
                response.close()
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if _caused_by(exc, ForbiddenAddressError):
                return PushResult(None, "rejected", None, ForbiddenAddressError.reason)
            # The exception text holds the URL: report only its kind.
            return PushResult(None, "retry", None, f"network error: {type(exc).__name__}")
        return self._classify(sub, status, response, text)

    def _classify(
        self, sub: SubscriptionKeys, status: int, response: requests.Response, raw: bytes
    ) -> PushResult:
        if 200 <= status < 300:
            return PushResult(
                status, "delivered", None, f"{status} {response.reason or ''}".strip()
            )
        reason = self._reason(sub, status, response, raw)
        if status in (404, 410):
            return PushResult(status, "expired", None, reason)
        if status == 429 or 500 <= status < 600:
            retry_after = _parse_retry_after(response.headers.get("Retry-After"), self._clock())
            return PushResult(status, "retry", retry_after, reason)
        if 300 <= status < 400:
            return PushResult(
                status, "rejected", None, f"{status} unexpected redirect (not followed)"
            )
        return PushResult(status, "rejected", None, reason)

    @staticmethod
    def _reason(sub: SubscriptionKeys, status: int, response: requests.Response, raw: bytes) -> str:
        text = f"{status} {response.reason or ''}".strip()
        body = raw[:_BODY_READ_LIMIT].decode("utf-8", "replace")
        if body.strip():
            text = f"{text}: {' '.join(body.split())}"
        for secret in _secrets_of(sub):
            text = text.replace(secret, "<redacted>")
        if len(text) > REASON_MAX_CHARS:
            text = text[: REASON_MAX_CHARS - 3] + "..."
        return text
