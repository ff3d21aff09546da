"""The Web Push sender: encrypts (``ece``), signs (``vapid``) and posts pushes
(``webapp.platform.outbound.http``).

Why not ``pywebpush.webpush()`` per message: it parses the VAPID key, signs a fresh JWT (which
the push service must verify again), decodes the subscription key and opens a new connection
on every call. Here the only per-recipient work is the encryption; keys are decoded once
(cache), JWTs are signed once per origin, connections are kept alive. Answers map to the
channel outcomes; a reason never holds the endpoint or the keys (together, a credential).
Where the time goes: bench/README.md.
"""

from __future__ import annotations

import binascii
import logging
import math
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec

from webapp.delivery.channels.base import Outcome
from webapp.delivery.channels.webpush import ece
from webapp.delivery.channels.webpush.subscription import SubscriptionKeys
from webapp.delivery.channels.webpush.vapid import Vapid, b64url_decode
from webapp.platform.outbound.http import (
    BODY_READ_LIMIT,
    ForbiddenAddressError,
    Pools,
    RequestError,
    Target,
    parse_retry_after,
    parse_target,
)

URGENCIES = frozenset({"very-low", "low", "normal", "high"})
REASON_MAX_CHARS = 200
_KEY_CACHE_SIZE = 4096
_TARGET_CACHE_SIZE = 4096
# Request threads a process may start (lazily, and reused): every concurrent send_all call
# takes at most its concurrency of them.
MAX_THREADS = 4096

log = logging.getLogger(__name__)


class Push(NamedTuple):
    """One push to send: where, the plaintext payload, its Urgency and collapse topic."""

    sub: SubscriptionKeys
    payload: bytes
    urgency: str = "normal"
    topic: str | None = None


def _check_options(ttl: int, urgency: str) -> None:
    if urgency not in URGENCIES:
        raise ValueError(f"urgency must be one of {sorted(URGENCIES)}")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise ValueError("ttl must be a non-negative integer")


def _secrets_of(sub: SubscriptionKeys) -> list[str]:
    """Strings that must never appear in a reason: the endpoint, its path and tokens, the keys."""
    found = {sub.endpoint, sub.p256dh, sub.auth}
    rest = sub.endpoint.split("://", 1)[-1].partition("/")[2]
    if rest:
        found.add("/" + rest)
        found.add(rest)
        found.update(t for t in re.split(r"[/?&=#;]", rest) if len(t) >= 12)
    return sorted((s for s in found if s), key=len, reverse=True)


class PushSender:
    """Encrypts and delivers Web Push messages; one instance per worker process.

    Thread-safe: ``send`` and ``send_all`` may run in several threads or greenlets at once
    (each request takes a connection from its origin's pool; a pool opens more when all are
    busy and keeps up to ``pool_maxsize`` idle). ``timeout`` bounds each request as a whole,
    connect to last byte. With ``allowed_hosts`` (``PUSH_ALLOWED_HOSTS``), every new
    connection is checked after it is made: if the address actually connected to is not public
    and the host is not allowlisted, nothing is sent (DNS rebinding between the send-time check
    and the connect). HTTP proxies are not used: the guard needs the real peer.
    """

    def __init__(
        self,
        vapid_private_key: str,
        vapid_subject: str,
        *,
        timeout: float,
        clock: Callable[[], float] = time.time,
        pool_maxsize: int = 256,
        concurrency: int = 16,
        allowed_hosts: tuple[str, ...] | None = None,
    ) -> None:
        if not (0 < timeout < math.inf):
            raise ValueError("a finite positive timeout is required: hanging requests pile up")
        self.vapid = Vapid(vapid_private_key, vapid_subject, clock=clock)
        self.public_key = self.vapid.public_key
        self._clock = clock
        self.concurrency = max(1, int(concurrency))
        if urllib.request.getproxies_environment():
            log.warning("push sender: proxy variables are set but pushes are sent directly")
        self._pools = Pools(
            maxsize=max(1, int(pool_maxsize), self.concurrency),
            timeout=float(timeout),
            allowed_hosts=allowed_hosts,
        )
        self._lock = threading.Lock()
        self._key_cache: dict[tuple[str, str], tuple[ec.EllipticCurvePublicKey, bytes, bytes]] = {}
        self._target_cache: dict[str, Target] = {}
        self._threads: ThreadPoolExecutor | None = None

    # -- public API ----------------------------------------------------------------------------
    def send(
        self,
        sub: SubscriptionKeys,
        payload: bytes,
        *,
        ttl: int,
        urgency: str = "normal",
        topic: str | None = None,
    ) -> Outcome:
        """Encrypt ``payload`` for ``sub`` and deliver it; never raises for push failures.

        ``ttl`` is how long (seconds) the push service keeps the message for an offline
        browser; ``topic`` is any string, hashed into a collapse key (newer replaces older).
        """
        return self.send_all([Push(sub, payload, urgency, topic)], ttl=ttl)[0]

    def send_many(
        self,
        messages: Iterable[tuple[SubscriptionKeys, bytes]],
        *,
        ttl: int,
        urgency: str = "normal",
        topic: str | None = None,
    ) -> list[Outcome]:
        """``send`` to many recipients with the same options; results in input order."""
        return self.send_all([Push(s, p, urgency, topic) for s, p in messages], ttl=ttl)

    def send_all(self, pushes: Sequence[Push], *, ttl: int) -> list[Outcome]:
        """Send every push, up to ``concurrency`` requests at once; results in input order.

        Everything is encrypted first (hot caches), then posted by the process's threads
        (greenlets in a gevent worker; made once, reused by every call), at most
        ``concurrency`` of them for this call, so waiting for one answer overlaps the others
        and a call lasts at most ``ceil(n / concurrency)`` request deadlines.
        """
        for push in pushes:
            _check_options(ttl, push.urgency)
        prepared = [self._prepare(push, ttl) for push in pushes]
        if sum(1 for p in prepared if not isinstance(p, Outcome)) <= 1:
            return [
                self._post_prepared(push.sub, p) for push, p in zip(pushes, prepared, strict=True)
            ]
        slots = threading.BoundedSemaphore(self.concurrency)

        def post(sub: SubscriptionKeys, request: tuple[Target, dict[str, str], bytes]) -> Outcome:
            try:
                return self._post(sub, *request)
            finally:
                slots.release()

        pending: list[Outcome | Future[Outcome]] = []
        for push, p in zip(pushes, prepared, strict=True):
            if isinstance(p, Outcome):
                pending.append(p)
            else:
                slots.acquire()
                pending.append(self._executor().submit(post, push.sub, p))
        return [p if isinstance(p, Outcome) else p.result() for p in pending]

    def topic_header(self, topic: str) -> str:
        """The ``Topic`` header for a collapse key: 32 chars of base64url (RFC 8030 limit)."""
        return self.vapid.topic_header(topic)

    def close(self) -> None:
        """Stop the request threads and close the pooled connections (later sends reopen
        them)."""
        with self._lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True)
        self._pools.close()

    def __enter__(self) -> PushSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _prepare(self, push: Push, ttl: int) -> tuple[Target, dict[str, str], bytes] | Outcome:
        """Where to, headers and encrypted body for one push, or why it cannot be sent."""
        if len(push.payload) > ece.MAX_PAYLOAD_BYTES:
            return Outcome(
                None,
                "rejected",
                None,
                f"payload too large ({len(push.payload)} > {ece.MAX_PAYLOAD_BYTES})",
            )
        try:
            receiver, point, auth = self._receiver(push.sub)
        except (ValueError, TypeError, binascii.Error):
            return Outcome(None, "rejected", None, "invalid subscription keys")
        try:
            target = self._target(push.sub.endpoint)
        except (ValueError, TypeError):
            return Outcome(None, "rejected", None, "invalid endpoint URL")
        headers = {
            "Authorization": self.vapid.header(target.origin),
            "TTL": str(ttl),
            "Urgency": push.urgency,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Accept-Encoding": "identity",
            "User-Agent": "beacon-push/1",
        }
        if push.topic is not None:
            headers["Topic"] = self.vapid.topic_header(push.topic)
        body = ece.encrypt_aes128gcm(push.payload, receiver, point, auth)
        return target, headers, body

    def _post_prepared(
        self, sub: SubscriptionKeys, prepared: tuple[Target, dict[str, str], bytes] | Outcome
    ) -> Outcome:
        return prepared if isinstance(prepared, Outcome) else self._post(sub, *prepared)

    def _executor(self) -> ThreadPoolExecutor:
        """The process's request threads: started as needed, kept idle for reuse (thread
        start-up cost more than a request); each ``send_all`` bounds its own share."""
        if self._threads is None:
            with self._lock:
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(
                        max_workers=MAX_THREADS, thread_name_prefix="push-send"
                    )
        return self._threads

    def _receiver(self, sub: SubscriptionKeys) -> tuple[ec.EllipticCurvePublicKey, bytes, bytes]:
        """The subscription's public key (object and point) and auth secret, decoded once."""
        cache_key = (sub.p256dh, sub.auth)
        cached = self._key_cache.get(cache_key)
        if cached is not None:
            return cached
        point = b64url_decode(sub.p256dh)
        auth = b64url_decode(sub.auth)
        if len(point) != 65 or len(auth) != 16:
            raise ValueError("bad key length")
        entry = (ec.EllipticCurvePublicKey.from_encoded_point(ece.CURVE, point), point, auth)
        with self._lock:
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.pop(next(iter(self._key_cache)))  # oldest first
            self._key_cache[cache_key] = entry
        return entry

    def _target(self, endpoint: str) -> Target:
        """The endpoint parsed once (cache)."""
        target = self._target_cache.get(endpoint)
        if target is not None:
            return target
        target = parse_target(endpoint)
        with self._lock:
            if len(self._target_cache) >= _TARGET_CACHE_SIZE:
                self._target_cache.pop(next(iter(self._target_cache)))  # oldest first
            self._target_cache[endpoint] = target
        return target

    def _post(
        self, sub: SubscriptionKeys, target: Target, headers: dict[str, str], body: bytes
    ) -> Outcome:
        try:
            answer = self._pools.post(target, headers, body)
        except ForbiddenAddressError:
            return Outcome(None, "rejected", None, ForbiddenAddressError.reason)
        except RequestError as exc:
            return Outcome(None, "retry", None, str(exc))
        return self._classify(sub, answer.status, answer.reason, answer.retry_after, answer.body)

    def _classify(
        self, sub: SubscriptionKeys, status: int, reason: str, retry_after: str | None, raw: bytes
    ) -> Outcome:
        if 200 <= status < 300:
            return Outcome(status, "delivered", None, f"{status} {reason}".strip())
        text = self._reason(sub, status, reason, raw)
        if status in (404, 410):
            return Outcome(status, "expired", None, text)
        if status == 429 or 500 <= status < 600:
            return Outcome(status, "retry", parse_retry_after(retry_after, self._clock()), text)
        if 300 <= status < 400:
            return Outcome(status, "rejected", None, f"{status} unexpected redirect (not followed)")
        return Outcome(status, "rejected", None, text)

    @staticmethod
    def _reason(sub: SubscriptionKeys, status: int, reason: str, raw: bytes) -> str:
        text = f"{status} {reason}".strip()
        body = raw[:BODY_READ_LIMIT].decode("utf-8", "replace")
        if body.strip():
            text = f"{text}: {' '.join(body.split())}"
        for secret in _secrets_of(sub):
            text = text.replace(secret, "<redacted>")
        if len(text) > REASON_MAX_CHARS:
            text = text[: REASON_MAX_CHARS - 3] + "..."
        return text
