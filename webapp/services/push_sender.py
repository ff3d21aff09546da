"""The one Web Push sender: aes128gcm payload encryption (RFC 8291) plus VAPID (RFC 8292).

Why not call ``pywebpush.webpush()`` per message: it rebuilds everything on every call — it
parses the VAPID key, signs a fresh ES256 JWT (which the push service must then verify again),
decodes the subscription key and, without a session, builds a new ``requests`` session and opens
a new TCP/TLS connection. None of that is needed per message; the only per-recipient work is
the encryption (a fresh ephemeral P-256 key, one ECDH, HKDF and AES-GCM: Web Push has no
multi-recipient send). So this module:

* encrypts with ``cryptography`` primitives directly (RFC 8291 / RFC 8188 aes128gcm, one
  record; HKDF with one output block is two HMACs, done with ``hmac.digest``), a fresh
  ephemeral key per message, and decodes each subscription's public key only once (cache);
* signs the VAPID JWT once per push-service origin and reuses it until it is within an hour of
  expiry (``exp`` 12 h ahead, never more than 24 h; Apple asks for at most one refresh an hour);
* sends over keep-alive connections of its own (``http.client``, a small pool per push-service
  origin; safe for threads and gevent greenlets: a request has its connection to itself),
  always with a timeout, never retrying (that is the worker's job, with backoff) and never
  following redirects (a redirect would let a push endpoint bounce the worker into the internal
  network); https is verified (``ssl.create_default_context``: certificate chain and host name)
  against ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` if set, else certifi's bundle;
* maps the push service's answer to an outcome the worker acts on (delivered / expired / retry /
  rejected) and never puts the endpoint or the keys in the reason: together they are a
  credential that would let anyone push to that browser.

Where the time goes (bench/push_throughput.py, bench/README.md): the ECDH is most of the
encryption, and the encryption about a third of the sender's CPU per push; the rest is the HTTP
exchange. Through ``requests`` that exchange cost about four encryptions, through urllib3's
pools directly still two to three, through ``http.client`` about two (more than half of it
reading and parsing the answer). Each request goes out with one ``sendall``, head and body: a
second write costs the sender, and the push service, another trip through the kernel's TCP
stack. ``send_many`` encrypts in batches (hot caches) on the calling thread while a small
thread pool posts the previous batch.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import math
import os
import random
import re
import select
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "ForbiddenAddressError",
    "PushResult",
    "PushSender",
    "SubscriptionKeys",
    "backoff_delay",
    "encrypt_aes128gcm",
    "generate_vapid_keypair",
    "vapid_public_key_from_private",
]

log = logging.getLogger(__name__)

Outcome = Literal["delivered", "expired", "retry", "rejected"]

_CURVE = ec.SECP256R1()
_ECDH = ec.ECDH()
_X962 = serialization.Encoding.X962
_UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint
# RFC 8291 section 4: push services must accept a 4096-byte body; that is 86 bytes of header
# (salt, record size, 65-byte key id), the payload, a 1-byte delimiter and a 16-byte tag.
MAX_PAYLOAD_BYTES = 3993
RECORD_SIZE = 4096
JWT_LIFETIME = 12 * 3600  # seconds; RFC 8292 allows at most 24 h
JWT_REFRESH_MARGIN = 3600  # re-sign when less than this is left
JWT_MAX_LIFETIME = 24 * 3600
URGENCIES = frozenset({"very-low", "low", "normal", "high"})
REASON_MAX_CHARS = 200
_BODY_READ_LIMIT = 4096  # never buffer more than this of a push service's answer
_KEY_CACHE_SIZE = 4096
_TARGET_CACHE_SIZE = 4096
_MAX_ORIGINS = 16  # push-service origins with a connection pool (oldest dropped first)
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_BATCH = 64  # send_many: messages encrypted ahead of posting
_JWT_HEADER_B64 = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"ES256"}').rstrip(b"=").decode()
# RFC 8291 section 3.4 and RFC 8188 section 2.2 (the HKDF "info" strings, with the 0x01 counter
# byte of HKDF-Expand's single output block already appended where the info is constant).
_KEY_INFO = b"WebPush: info\x00"
_CEK_INFO = b"Content-Encoding: aes128gcm\x00\x01"
_NONCE_INFO = b"Content-Encoding: nonce\x00\x01"
_RS_IDLEN = RECORD_SIZE.to_bytes(4, "big") + bytes([65])


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


# -- encryption ------------------------------------------------------------------------------
def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def _encrypt_with(
    payload: bytes,
    receiver: ec.EllipticCurvePublicKey,
    receiver_point: bytes,
    auth_secret: bytes,
    ephemeral: ec.EllipticCurvePrivateKey,
    salt: bytes,
) -> bytes:
    sender_point = ephemeral.public_key().public_bytes(_X962, _UNCOMPRESSED)
    shared = ephemeral.exchange(_ECDH, receiver)
    # RFC 8291 section 3.4: IKM = HKDF(salt=auth_secret, ikm=ECDH secret, info=key_info, L=32).
    # Every HKDF here needs at most one 32-byte output block, so extract is HMAC(salt, ikm) and
    # expand is HMAC(prk, info || 0x01), truncated (RFC 5869).
    prk_key = _hmac_sha256(auth_secret, shared)
    ikm = _hmac_sha256(prk_key, _KEY_INFO + receiver_point + sender_point + b"\x01")
    # RFC 8188 section 2.2-2.3: content-encryption key and nonce from the salt.
    prk = _hmac_sha256(salt, ikm)
    cek = _hmac_sha256(prk, _CEK_INFO)[:16]
    nonce = _hmac_sha256(prk, _NONCE_INFO)[:12]
    # One record (the payload always fits): plaintext, the 0x02 last-record delimiter, no
    # padding; the record's sequence number is 0, so its IV is the nonce itself.
    ciphertext = AESGCM(cek).encrypt(nonce, payload + b"\x02", None)
    return salt + _RS_IDLEN + sender_point + ciphertext


def encrypt_aes128gcm(
    payload: bytes,
    receiver: ec.EllipticCurvePublicKey,
    receiver_point: bytes,
    auth_secret: bytes,
) -> bytes:
    """The Web Push message body for ``payload`` (RFC 8291, ``Content-Encoding: aes128gcm``).

    ``receiver`` is the subscription's P-256 key (``p256dh``), ``receiver_point`` the same key
    as its 65-byte uncompressed point, ``auth_secret`` the 16-byte ``auth``. Each call uses a
    fresh ephemeral key and salt. ``payload`` must be at most ``MAX_PAYLOAD_BYTES``.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload larger than {MAX_PAYLOAD_BYTES} bytes")
    return _encrypt_with(
        payload,
        receiver,
        receiver_point,
        auth_secret,
        ec.generate_private_key(_CURVE),  # ephemeral: one per message
        os.urandom(16),
    )


# -- the sender ------------------------------------------------------------------------------
def _check_options(ttl: int, urgency: str) -> None:
    if urgency not in URGENCIES:
        raise ValueError(f"urgency must be one of {sorted(URGENCIES)}")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise ValueError("ttl must be a non-negative integer")


class _Target(NamedTuple):
    """Where a push endpoint's request goes."""

    scheme: str  # "https" or "http"
    host: str  # hostname or IP, lowercased, no brackets
    port: int
    origin: str  # scheme://host[:port]: the VAPID aud and the JWT cache key
    path: str  # the request target: path and query


def _parse_target(endpoint: str) -> _Target:
    """Split an endpoint URL; ``ValueError`` if it is not an http(s) URL we can post to."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("https", "http") or not host or not host.isascii():
        raise ValueError("endpoint is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("endpoint has credentials")
    port = parts.port  # ValueError on a bad port
    default = 443 if scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host
    origin = f"{scheme}://{shown}" if port in (None, default) else f"{scheme}://{shown}:{port}"
    if not endpoint.isascii() or _SPACE_OR_CONTROL.search(endpoint):
        raise ValueError("endpoint has characters a request line cannot carry")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return _Target(scheme, host, default if port is None else port, origin, path)


def _network_error(exc: BaseException, connected: bool) -> str:
    """The kind of a network failure, named as ``requests`` named them (reasons stay stable)."""
    if isinstance(exc, ssl.SSLError):
        kind = "SSLError"  # certificate verification failures included
    elif isinstance(exc, TimeoutError):
        kind = "ReadTimeout" if connected else "ConnectTimeout"
    else:
        kind = "ConnectionError"  # refused, reset, DNS, a malformed answer
    return f"network error: {kind}"


def _secrets_of(sub: SubscriptionKeys) -> list[str]:
    """Strings that must never appear in a reason: the endpoint, its path and tokens, the keys."""
    found = {sub.endpoint, sub.p256dh, sub.auth}
    rest = sub.endpoint.split("://", 1)[-1].partition("/")[2]
    if rest:
        found.add("/" + rest)
        found.add(rest)
        found.update(t for t in re.split(r"[/?&=#;]", rest) if len(t) >= 12)
    return sorted((s for s in found if s), key=len, reverse=True)


# -- HTTP: keep-alive connections, connect-time address guard ------------------------------
class ForbiddenAddressError(ConnectionError):
    """A push endpoint's host resolved, at connect time, to an address we must not talk to."""

    reason = "endpoint host resolved to a non-public address at connect time; nothing sent"


def _ca_bundle() -> str | None:
    """The CA bundle https is verified against: the one the environment names, else certifi's.

    ``None`` (no certifi) means the system's default trust store.
    """
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        return bundle
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with requests
        return None
    return certifi.where()


def _tls_context() -> ssl.SSLContext:
    """Certificate and host name verification, TLS 1.2 or later (``ssl`` module defaults)."""
    context = ssl.create_default_context(cafile=_ca_bundle())
    context.set_alpn_protocols(["http/1.1"])
    return context


def _peer_check(allowed_hosts: tuple[str, ...]) -> Callable[[str, int, socket.socket], None]:
    """Raises ``ForbiddenAddressError`` if a new connection reached a non-public address."""
    from webapp.services.push_validation import host_is_allowlisted, is_public_address

    def check(host: str, port: int, sock: socket.socket) -> None:
        if host_is_allowlisted(host, port, allowed_hosts):
            return
        try:
            peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
        except (OSError, ValueError, IndexError):
            peer = None
        if peer is None or not is_public_address(peer):
            raise ForbiddenAddressError(ForbiddenAddressError.reason)

    return check


class _Connection(http.client.HTTPConnection):
    """One keep-alive HTTP/1.1 connection to a push service.

    ``connect`` checks the peer address (when guarded) before any byte is sent, the TLS
    handshake included. ``request`` sends the head and the body with one ``sendall``:
    http.client writes them separately, which costs a second trip through the kernel's TCP
    stack on both sides (on loopback the sender pays for the receiver's side as well).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        tls: ssl.SSLContext | None,
        check: Callable[[str, int, socket.socket], None] | None,
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._tls = tls
        self._check = check
        self._held: list[bytes] | None = None

    def connect(self) -> None:
        super().connect()  # TCP (with TCP_NODELAY), the timeout applies to every socket call
        try:
            if self._check is not None:
                self._check(self.host, self.port, self.sock)
            if self._tls is not None:
                self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)
        except BaseException:
            self.close()
            raise

    def request(  # type: ignore[override]
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> None:
        self._held = []
        try:
            super().request(method, url, body, headers)
            data = b"".join(self._held)
        finally:
            self._held = None
        super().send(data)

    def send(self, data: Any) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            super().send(data)


class _HTTPSConnection(_Connection):
    default_port = 443  # no ":443" in the Host header


def _is_dropped(sock: socket.socket | None) -> bool:
    """Whether an idle keep-alive connection was closed (or sent something) meanwhile."""
    if sock is None:
        return True
    try:
        poll = getattr(select, "poll", None)  # not on every platform
        if poll is not None:
            poller = poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _Pool:
    """Idle keep-alive connections to one origin, most recently used first.

    A request takes a connection for itself (or a new one when none is idle) and hands it
    back when the answer was read to the end, so concurrent requests from threads or gevent
    greenlets never share a connection; the lock is never held during I/O.
    """

    def __init__(
        self,
        target: _Target,
        *,
        maxsize: int,
        timeout: float,
        tls: ssl.SSLContext | None,
        check: Callable[[str, int, socket.socket], None] | None,
    ) -> None:
        self._target = target
        self._maxsize = maxsize
        self._timeout = timeout
        self._tls = tls
        self._check = check
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self) -> _Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                cls = _HTTPSConnection if self._tls is not None else _Connection
                return cls(
                    self._target.host,
                    self._target.port,
                    timeout=self._timeout,
                    tls=self._tls,
                    check=self._check,
                )
            if not _is_dropped(conn.sock):
                return conn
            conn.close()

    def put(self, conn: _Connection) -> None:
        if conn.sock is not None:
            with self._lock:
                if not self._closed and len(self._idle) < self._maxsize:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PushSender:
    """Encrypts and delivers Web Push messages; one instance per worker process.

    Thread-safe: ``send`` may be called from several threads or greenlets at once (each
    request takes a connection from its origin's pool; a pool opens more when all are busy
    and keeps up to ``pool_maxsize`` idle). With ``allowed_hosts`` (``PUSH_ALLOWED_HOSTS``),
    every new connection is checked after it is made: if the address actually connected to is
    not public and the host is not allowlisted, nothing is sent. That closes the window
    ``check_endpoint_target`` leaves open between its DNS lookup and the HTTP client's (DNS
    rebinding). HTTP proxies (``HTTPS_PROXY``...) are not used: the sender connects directly,
    which the guard needs anyway (behind a proxy the peer is always the proxy).
    """

    def __init__(
        self,
        vapid_private_key: str,
        vapid_subject: str,
        *,
        timeout: float,
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

        if urllib.request.getproxies_environment():
            log.warning("push sender: proxy variables are set but pushes are sent directly")
        self._pool_maxsize = max(1, int(pool_maxsize), self._max_workers)
        self._tls = _tls_context()
        self._check = None if allowed_hosts is None else _peer_check(tuple(allowed_hosts))
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        self._jwt_cache: dict[str, tuple[str, int]] = {}
        self._key_cache: dict[tuple[str, str], tuple[ec.EllipticCurvePublicKey, bytes, bytes]] = {}
        self._target_cache: dict[str, _Target] = {}
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

        Messages are encrypted in batches on the calling thread (hot caches) and posted by a
        small thread pool, so that waiting for one push service answer overlaps the next
        request, and encrypting one batch overlaps posting the one before.
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
        posting: Iterator[PushResult] | None = None  # the batch the pool is sending
        for start in range(0, len(items), _BATCH):
            batch = [
                (sub, self._prepare(sub, payload, ttl, urgency, topic))
                for sub, payload in items[start : start + _BATCH]
            ]
            if posting is not None:
                results.extend(posting)
            posting = executor.map(self._post_prepared, batch)  # starts now; collected later
        if posting is not None:
            results.extend(posting)
        return results

    def topic_header(self, topic: str) -> str:
        """The ``Topic`` header for a collapse key: 32 chars of base64url (RFC 8030 limit)."""
        digest = hmac.new(self._topic_key, topic.encode("utf-8"), hashlib.sha256).digest()
        return _b64url_encode(digest[:24])

    def close(self) -> None:
        """Stop the thread pool and close the pooled connections (later sends reopen them)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def __enter__(self) -> PushSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _prepare(
        self, sub: SubscriptionKeys, payload: bytes, ttl: int, urgency: str, topic: str | None
    ) -> tuple[_Target, dict[str, str], bytes] | PushResult:
        """Where to, headers and encrypted body for one push, or why it cannot be sent."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return PushResult(
                None, "rejected", None, f"payload too large ({len(payload)} > {MAX_PAYLOAD_BYTES})"
            )
        try:
            receiver, point, auth = self._receiver(sub)
        except (ValueError, TypeError, binascii.Error):
            return PushResult(None, "rejected", None, "invalid subscription keys")
        try:
            target = self._target(sub.endpoint)
        except (ValueError, TypeError):
            return PushResult(None, "rejected", None, "invalid endpoint URL")
        headers = {
            "Authorization": self._vapid_header(target.origin),
            "TTL": str(ttl),
            "Urgency": urgency,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Accept-Encoding": "identity",
            "User-Agent": "beacon-push/1",
        }
        if topic is not None:
            headers["Topic"] = self.topic_header(topic)
        body = _encrypt_with(
            payload, receiver, point, auth, ec.generate_private_key(_CURVE), os.urandom(16)
        )
        return target, headers, body

    def _post_prepared(
        self, item: tuple[SubscriptionKeys, tuple[_Target, dict[str, str], bytes] | PushResult]
    ) -> PushResult:
        sub, prepared = item
        return prepared if isinstance(prepared, PushResult) else self._post(sub, *prepared)

    def _receiver(self, sub: SubscriptionKeys) -> tuple[ec.EllipticCurvePublicKey, bytes, bytes]:
        """The subscription's public key (object and point) and auth secret, decoded once."""
        cache_key = (sub.p256dh, sub.auth)
        cached = self._key_cache.get(cache_key)
        if cached is not None:
            return cached
        point = _b64url_decode(sub.p256dh)
        auth = _b64url_decode(sub.auth)
        if len(point) != 65 or len(auth) != 16:
            raise ValueError("bad key length")
        entry = (ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, point), point, auth)
        with self._lock:
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.pop(next(iter(self._key_cache)))  # oldest first
            self._key_cache[cache_key] = entry
        return entry

    def _target(self, endpoint: str) -> _Target:
        """The endpoint parsed once (cache)."""
        target = self._target_cache.get(endpoint)
        if target is not None:
            return target
        target = _parse_target(endpoint)
        with self._lock:
            if len(self._target_cache) >= _TARGET_CACHE_SIZE:
                self._target_cache.pop(next(iter(self._target_cache)))  # oldest first
            self._target_cache[endpoint] = target
        return target

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

    def _pool(self, target: _Target) -> _Pool:
        """The connection pool of the endpoint's origin."""
        pool = self._pools.get(target.origin)
        if pool is not None:
            return pool
        evicted = None
        with self._lock:
            pool = self._pools.get(target.origin)
            if pool is None:
                if len(self._pools) >= _MAX_ORIGINS:
                    evicted = self._pools.pop(next(iter(self._pools)))  # oldest first
                pool = _Pool(
                    target,
                    maxsize=self._pool_maxsize,
                    timeout=self._timeout,
                    tls=self._tls if target.scheme == "https" else None,
                    check=self._check,
                )
                self._pools[target.origin] = pool
        if evicted is not None:
            evicted.close()
        return pool

    def _post(
        self, sub: SubscriptionKeys, target: _Target, headers: dict[str, str], body: bytes
    ) -> PushResult:
        pool = self._pool(target)
        conn = pool.get()
        connected = conn.sock is not None
        try:
            if not connected:
                conn.connect()  # here, so that a failure is known to be a connect failure
                connected = True
            conn.request("POST", target.path, body, headers)
            response = conn.getresponse()
            status, reason = response.status, response.reason or ""
            retry_after = response.getheader("Retry-After")
            raw = response.read(_BODY_READ_LIMIT + 1)
        except ForbiddenAddressError:
            conn.close()
            return PushResult(None, "rejected", None, ForbiddenAddressError.reason)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            # The exception text may hold the URL: report only the kind of failure.
            return PushResult(None, "retry", None, _network_error(exc, connected))
        if response.isclosed():
            pool.put(conn)  # read to the end: reusable, unless the server closes it
        else:
            response.close()  # a longer answer is cut off, not buffered; drop the connection
            conn.close()
        return self._classify(sub, status, reason, retry_after, raw)

    def _classify(
        self, sub: SubscriptionKeys, status: int, reason: str, retry_after: str | None, raw: bytes
    ) -> PushResult:
        if 200 <= status < 300:
            return PushResult(status, "delivered", None, f"{status} {reason}".strip())
        text = self._reason(sub, status, reason, raw)
        if status in (404, 410):
            return PushResult(status, "expired", None, text)
        if status == 429 or 500 <= status < 600:
            return PushResult(status, "retry", _parse_retry_after(retry_after, self._clock()), text)
        if 300 <= status < 400:
            return PushResult(
                status, "rejected", None, f"{status} unexpected redirect (not followed)"
            )
        return PushResult(status, "rejected", None, text)

    @staticmethod
    def _reason(sub: SubscriptionKeys, status: int, reason: str, raw: bytes) -> str:
        text = f"{status} {reason}".strip()
        body = raw[:_BODY_READ_LIMIT].decode("utf-8", "replace")
        if body.strip():
            text = f"{text}: {' '.join(body.split())}"
        for secret in _secrets_of(sub):
            text = text.replace(secret, "<redacted>")
        if len(text) > REASON_MAX_CHARS:
            text = text[: REASON_MAX_CHARS - 3] + "..."
        return text
