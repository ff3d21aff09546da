"""The APNs channel: iOS devices through Apple's HTTP/2 provider API, token-based.

Apple wants many requests multiplexed over few long-lived HTTP/2 connections and one provider
token reused for up to an hour (``token``). The transport is the shared ``Http2Client``
(``webapp.platform.outbound.http2``: one connection, ``concurrency`` streams at a time per
batch, each bound by one deadline, a lost connection tried once more); this module holds what
is Apple's: the headers and the JSON body, what APNs' answers mean, and the provider token's
refresh rule (after a 403 ``ExpiredProviderToken``/``InvalidProviderToken``, the push is sent
once more with a new token if the rule allows one). A reason is APNs' ``reason`` field (or the
kind of network failure), never the device token or the provider token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from config import Settings
from webapp.delivery.channels import encoding
from webapp.delivery.channels.apns.token import ProviderToken, load_key
from webapp.delivery.channels.base import DeviceToken, Item, Notification, Outcome
from webapp.platform.outbound.http import parse_retry_after
from webapp.platform.outbound.http2 import Answer, Failure, Http2Client, Request

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "ApnsChannel",
    "ProviderToken",
    "collapse_id",
    "payload_body",
]

MAX_PAYLOAD_BYTES = 4096  # APNs' limit for a regular (non-VoIP) notification
COLLAPSE_ID_MAX_BYTES = 64
BODY_READ_LIMIT = 4096  # of an answer, parsed for its reason; APNs' are a few bytes of JSON
# 400 answers that mean this device token will never work: delete it. Not
# DeviceTokenNotForTopic: a wrong APNS_TOPIC gives it for every device, and deleting them all
# would outlive the fix (such devices fail, and go after PUSH_FAILURE_LIMIT failures).
DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken"})
TOKEN_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})
_HEX_TOKEN = re.compile(r"[0-9A-Fa-f]{8,512}\Z")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,255}\Z")
_REASON = re.compile(r"[A-Za-z]{1,64}\Z")
_BEARER = "bearer "

log = logging.getLogger(__name__)


def collapse_id(key: str) -> str:
    """``apns-collapse-id`` for a collapse key: the key itself when it fits (64 bytes of
    printable ASCII), else a hash of it (distinct keys stay distinct)."""
    if key.isascii() and key.isprintable() and len(key) <= COLLAPSE_ID_MAX_BYTES:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def payload_body(note: Notification, badge: int | None) -> bytes:
    """The JSON APNs delivers: ``aps`` and the payload's other fields at the top level,
    within ``MAX_PAYLOAD_BYTES`` (the alert's body, then its title, shortened);
    ``ValueError`` if even without them it does not fit."""
    payload = dict(note.payload)
    payload.pop("aps", None)
    carried = payload.pop("badge", None)
    if badge is None and isinstance(carried, int) and not isinstance(carried, bool):
        badge = carried
    if note.silent:
        silent: dict[str, Any] = {"content-available": 1}
        if badge is not None:
            silent["badge"] = badge
        return encoding.fit({"aps": silent, **payload}, MAX_PAYLOAD_BYTES)
    texts = {f: payload.pop(f) for f in ("title", "body") if isinstance(payload.get(f), str)}

    def build(alert: dict[str, str]) -> dict[str, Any]:
        aps: dict[str, Any] = {"alert": alert}
        if badge is not None:
            aps["badge"] = badge
        aps["sound"] = "default"
        if payload.get("topic_id"):
            aps["thread-id"] = str(payload["topic_id"])
        return {"aps": aps, **payload}

    full = encoding.dumps(build(texts))
    if len(full) <= MAX_PAYLOAD_BYTES:
        return full
    # The alert's strings cost the same bytes nested as flat: fit them flat, in what is left.
    flat = {**payload, **texts}
    overhead = len(full) - len(encoding.dumps(flat))
    fitted = json.loads(encoding.fit(flat, MAX_PAYLOAD_BYTES - overhead))
    body = encoding.dumps(build({f: fitted[f] for f in texts}))
    if len(body) > MAX_PAYLOAD_BYTES:  # pragma: no cover - the arithmetic above holds
        raise ValueError("notification does not fit")
    return body


class ApnsChannel:
    """Sends a batch to APNs over one shared HTTP/2 client; thread-safe (concurrent ``send``
    calls share the connection and the provider token)."""

    name = "apns"

    def __init__(
        self,
        token: ProviderToken,
        *,
        origin: str,
        topic: str,
        ttl: int,
        timeout: float,
        concurrency: int = 16,
        clock: Callable[[], float] = time.time,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not (0 < timeout < math.inf):
            raise ValueError("a finite positive timeout is required: hanging requests pile up")
        self.token = token
        self.origin = origin.rstrip("/")
        self.topic = topic
        self.ttl = int(ttl)
        self.timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))
        self._clock = clock
        self.http = Http2Client(
            name="apns",
            timeout=self.timeout,
            concurrency=self.concurrency,
            tls=tls,
            user_agent="beacon-apns/1",
        )

    @classmethod
    def from_settings(cls, s: Settings) -> ApnsChannel:
        if not s.apns_enabled:
            raise RuntimeError(
                "APNs is disabled: APNS_KEY_FILE, APNS_KEY_ID, APNS_TEAM_ID and APNS_TOPIC "
                "are required"
            )
        assert s.apns_key_file and s.apns_key_id and s.apns_team_id and s.apns_topic
        key = load_key(Path(s.apns_key_file).read_bytes())
        return cls(
            ProviderToken(key, s.apns_key_id, s.apns_team_id),
            origin=s.apns_origin,
            topic=s.apns_topic,
            ttl=s.push_ttl,
            timeout=s.push_request_timeout,
            concurrency=s.push_send_concurrency,
        )

    # -- public API ----------------------------------------------------------------------------
    def send(self, items: Sequence[Item]) -> list[Outcome]:
        """One outcome per item, in order; at most ``concurrency`` requests in flight, each
        given up (``retry``) when its deadline passes."""
        results: list[Outcome | None] = [None] * len(items)
        jobs: list[tuple[int, str]] = []  # (index, device token: kept out of every reason)
        requests: list[Request] = []
        bodies: dict[tuple[int, int | None], bytes | Outcome] = {}
        authorization: str | None = None
        for i, item in enumerate(items):
            prepared = self._prepare(item, bodies)
            if isinstance(prepared, Outcome):
                results[i] = prepared
                continue
            if authorization is None:
                authorization = _BEARER + self.token.get()
            device, request = prepared
            request.headers["authorization"] = authorization
            jobs.append((i, device))
            requests.append(request)
        answers = self.http.exchange_all(requests, again=self._again)
        for (i, device), answer in zip(jobs, answers, strict=True):
            results[i] = self._outcome(answer, device)
        return [r if r is not None else Outcome(None, "retry", None, "not sent") for r in results]

    def close(self) -> None:
        """Close the connection and stop the client's loop thread (a later send starts them
        again)."""
        self.http.close()

    def __enter__(self) -> ApnsChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- preparing -----------------------------------------------------------------------------
    def _prepare(
        self, item: Item, bodies: dict[tuple[int, int | None], bytes | Outcome]
    ) -> tuple[str, Request] | Outcome:
        address = item.address
        if not isinstance(address, DeviceToken) or not isinstance(address.token, str):
            return Outcome(None, "rejected", None, "not an APNs device token")
        if not _HEX_TOKEN.match(address.token):
            return Outcome(None, "expired", None, "BadDeviceToken")
        topic = address.app_id or self.topic
        if not _TOPIC.match(topic):
            return Outcome(None, "rejected", None, "invalid app id (apns-topic)")
        note = item.notification
        key = (id(note), item.badge)
        body = bodies.get(key)
        if body is None:
            try:
                body = payload_body(note, item.badge)
            except ValueError:
                body = Outcome(None, "rejected", None, "PayloadTooLarge")
            bodies[key] = body
        if isinstance(body, Outcome):
            return body
        headers = {
            "apns-topic": topic,
            "apns-push-type": "background" if note.silent else "alert",
            "apns-priority": "10" if note.urgency == "high" and not note.silent else "5",
            # 0: try once, keep nothing (APNs' meaning); else a unix time.
            "apns-expiration": str(int(self._clock()) + self.ttl if self.ttl > 0 else 0),
        }
        if note.collapse_key and not note.silent:
            headers["apns-collapse-id"] = collapse_id(note.collapse_key)
        url = f"{self.origin}/3/device/{address.token}"
        return address.token, Request(url, headers, body)

    # -- answers -------------------------------------------------------------------------------
    def _again(self, request: Request, answer: Answer) -> Request | None:
        """After an expired or invalid provider token: the push with a new one, if the
        refresh rule allows one (called in one of the client's worker threads)."""
        if answer.status != 403:
            return None
        reason = _reason(answer.body, answer.phrase)
        if reason not in TOKEN_REASONS:
            return None
        rejected = request.headers.get("authorization", "").removeprefix(_BEARER)
        fresh = self.token.refresh_after_rejection(rejected)
        if fresh is None:
            log.warning(
                "APNs refused the provider token (%s) and it is too young to be re-signed; "
                "check APNS_KEY_ID, APNS_TEAM_ID, the key and the clock",
                reason,
            )
            return None
        return request._replace(headers={**request.headers, "authorization": _BEARER + fresh})

    def _outcome(self, answer: Answer | Failure, device: str) -> Outcome:
        if isinstance(answer, Failure):
            return Outcome(None, "retry", None, f"network error: {answer.kind}")
        reason = _reason(answer.body, answer.phrase, device)
        status = answer.status
        if status == 200:
            return Outcome(status, "delivered", None, reason or "OK")
        if status == 410 or (status == 400 and reason in DEAD_TOKEN_REASONS):
            return Outcome(status, "expired", None, reason)
        if status == 429 or 500 <= status < 600:
            retry_after = parse_retry_after(answer.retry_after, self._clock())
            return Outcome(status, "retry", retry_after, reason)
        return Outcome(status, "rejected", None, reason)


def _reason(raw: bytes, phrase: str, device_token: str = "") -> str:
    """APNs' ``reason`` (an identifier such as ``Unregistered``), else the status phrase."""
    try:
        data = json.loads(raw[:BODY_READ_LIMIT] or b"{}")
    except ValueError:
        data = None
    reason = data.get("reason") if isinstance(data, dict) else None
    if not isinstance(reason, str) or not _REASON.match(reason):
        reason = phrase or ""
    return reason.replace(device_token, "<redacted>") if device_token else reason
