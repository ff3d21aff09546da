"""The Firebase Cloud Messaging channel (HTTP v1): Android apps, and iOS apps through Firebase.

One message per request is all HTTP v1 offers (the batch endpoint is gone), so a batch goes
out as concurrent requests multiplexed over one HTTP/2 connection: the shared ``Http2Client``
(``webapp.platform.outbound.http2``), each request given up at one deadline from its start,
however the far side trickles, without holding up the others. The bearer token comes from
``auth.AccessTokens``: fetched once, shared by every send of the process, refreshed when due
(before a batch, in the caller's thread) or once after FCM answers 401: the client's ``again``
callback refreshes it, in one of the client's worker threads (google-auth blocks on its HTTP
call; the event loop never waits for it), and the message goes once more within its deadline.

FCM's answers (a google.rpc error, its ``details[].errorCode`` the precise one) become outcomes
in ``_outcome``: a token FCM no longer knows, or that is malformed, expires the device; a
failure of our own credentials or message is ``rejected``; quota, 5xx and the network retry.
A reason never holds the device token or the access token.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import google.auth.exceptions

from config import Settings
from webapp.delivery.channels import encoding
from webapp.delivery.channels.base import Item, Outcome
from webapp.delivery.channels.fcm.auth import AccessTokens
from webapp.platform.outbound.http import parse_retry_after
from webapp.platform.outbound.http2 import (
    DEADLINE_PASSED,
    Answer,
    Failure,
    Http2Client,
    Request,
)

__all__ = ["AccessTokens", "FcmChannel", "build_message"]

log = logging.getLogger(__name__)

# FCM refuses a message whose data and notification (keys plus values) pass 4096 bytes. An
# alert carries its title and body twice (``notification`` for the system tray, ``data`` for
# the app), so its data map is held to 2000 bytes of JSON (quotes and commas only add to
# FCM's count): both copies stay under 4009 bytes. A silent message has data only.
FCM_DATA_LIMIT = 4096
ALERT_DATA_BUDGET = 2000
SILENT_DATA_BUDGET = 4000
# Data keys FCM refuses ("from", "message_type", "google."/"gcm." prefixes) or sets itself.
_RESERVED_KEYS = frozenset({"from", "message_type", "collapse_key", "notification"})
_RESERVED_PREFIXES = ("google", "gcm")
APNS_COLLAPSE_ID_MAX = 64  # bytes
REASON_MAX_CHARS = 200

# Messages that name the registration token as what was invalid (FCM's INVALID_ARGUMENT
# covers malformed messages too; these decide only when no field violation is given).
_ABOUT_TOKEN = re.compile(r"registration[ _-]?token", re.IGNORECASE)
TOKEN_FIELDS = frozenset({"message.token", "token"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _reserved(key: str) -> bool:
    lowered = key.lower()
    return lowered in _RESERVED_KEYS or lowered.startswith(_RESERVED_PREFIXES)


def _data(payload: dict[str, Any], badge: int | None) -> dict[str, str]:
    """The payload as FCM data: string values only (numbers as their JSON text, nested values
    as JSON), reserved keys and nulls left out, plus ``badge``."""
    data: dict[str, str] = {}
    for key, value in payload.items():
        if value is None or _reserved(str(key)):
            continue
        data[str(key)] = value if isinstance(value, str) else encoding.dumps(value).decode()
    if badge is not None:
        data["badge"] = str(badge)
    return data


def _collapse_id(key: str) -> str:
    """``apns-collapse-id`` holds at most 64 bytes: a longer key is cut on a character."""
    raw = key.encode()
    if len(raw) <= APNS_COLLAPSE_ID_MAX:
        return key
    return raw[:APNS_COLLAPSE_ID_MAX].decode("utf-8", errors="ignore")


def build_message(item: Item, *, ttl: int, now: float) -> dict[str, Any]:
    """The HTTP v1 ``message`` for one item; ``ValueError`` if it cannot fit FCM's limit."""
    note = item.notification
    badge = item.badge
    budget = SILENT_DATA_BUDGET if note.silent else ALERT_DATA_BUDGET
    data: dict[str, str] = json.loads(encoding.fit(_data(note.payload, badge), budget))
    key = note.collapse_key
    apns_headers = {
        "apns-collapse-id": _collapse_id(key),
        # 0: deliver now or never, as APNs defines it; else a UNIX time.
        "apns-expiration": "0" if ttl <= 0 else str(int(now) + ttl),
    }
    android: dict[str, Any] = {"ttl": f"{ttl}s", "collapse_key": key}
    message: dict[str, Any] = {"token": item.address.token, "data": data}
    if note.silent:
        android["priority"] = "NORMAL"
        aps: dict[str, Any] = {"content-available": 1}
        if badge is not None:
            aps["badge"] = badge
        apns_headers.update({"apns-priority": "5", "apns-push-type": "background"})
        apns: dict[str, Any] = {"headers": apns_headers, "payload": {"aps": aps}}
    else:
        high = note.urgency == "high"
        message["notification"] = {k: data[k] for k in ("title", "body") if data.get(k)}
        android["priority"] = "HIGH" if high else "NORMAL"
        android_note: dict[str, Any] = {"tag": key}
        if badge is not None:
            android_note["notification_count"] = badge
        android["notification"] = android_note
        apns_headers.update({"apns-priority": "10" if high else "5", "apns-push-type": "alert"})
        apns = {"headers": apns_headers}
        if badge is not None:
            apns["payload"] = {"aps": {"badge": badge}}
    message["android"] = android
    message["apns"] = apns
    return message


class _Error:
    """The parts of a google.rpc error body that decide an outcome."""

    def __init__(self, body: bytes) -> None:
        self.status = ""
        self.message = ""
        self.codes: set[str] = set()
        self.fields: set[str] = set()
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            return
        if not isinstance(error, dict):
            return
        if isinstance(error.get("status"), str):
            self.status = error["status"]
        if isinstance(error.get("message"), str):
            self.message = error["message"]
        details = error.get("details")
        for detail in details if isinstance(details, list) else ():
            if not isinstance(detail, dict):
                continue
            if isinstance(detail.get("errorCode"), str):
                self.codes.add(detail["errorCode"])
            violations = detail.get("fieldViolations")
            for violation in violations if isinstance(violations, list) else ():
                if isinstance(violation, dict) and isinstance(violation.get("field"), str):
                    self.fields.add(violation["field"])

    def has(self, name: str) -> bool:
        return name in self.codes or self.status == name

    def about_token(self) -> bool:
        """Whether an INVALID_ARGUMENT is about the registration token: the field violations
        say so when FCM lists them; otherwise its message has to name the token."""
        if self.fields:
            return bool(self.fields & TOKEN_FIELDS)
        return bool(_ABOUT_TOKEN.search(self.message))


def _clean(text: str, secrets: Sequence[str]) -> str:
    """Far-side text fit for a reason: without secrets or control characters, and short."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "…")
    text = _CONTROL.sub(" ", text).strip()
    return text[:REASON_MAX_CHARS]


def _outcome(
    status: int, body: bytes, retry_after: float | None, secrets: Sequence[str]
) -> Outcome:
    """What an FCM answer means for the device (the errorCode first, then the HTTP status)."""
    if 200 <= status < 300:
        return Outcome(status, "delivered")
    error = _Error(body)
    label = "/".join(sorted(error.codes)) or error.status or str(status)
    if error.has("UNREGISTERED") or (status == 404 and not error.codes):
        return Outcome(status, "expired", None, "FCM: token is no longer registered")
    if error.has("SENDER_ID_MISMATCH"):
        return Outcome(
            status, "expired", None, "FCM: token belongs to another sender (SENDER_ID_MISMATCH)"
        )
    if error.has("THIRD_PARTY_AUTH_ERROR"):
        return Outcome(
            status,
            "rejected",
            None,
            "FCM: the app's APNs or Web Push credentials in Firebase were refused "
            "(THIRD_PARTY_AUTH_ERROR)",
        )
    if (
        status == 429
        or status >= 500
        or any(error.has(c) for c in ("QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"))
    ):
        return Outcome(status, "retry", retry_after, f"FCM busy or failing ({status} {label})")
    if status == 400 or error.has("INVALID_ARGUMENT"):
        if error.about_token():
            return Outcome(status, "expired", None, "FCM: invalid registration token")
        detail = _clean(error.message, secrets)
        fields = ", ".join(sorted(error.fields))
        where = f" ({fields})" if fields else ""
        return Outcome(
            status, "rejected", None, f"FCM: invalid message{where}: {detail}".rstrip(": ")
        )
    if status == 401:
        return Outcome(
            status,
            "rejected",
            None,
            "FCM refused our access token (401) after a refresh: check the service account",
        )
    if status == 403:
        return Outcome(
            status,
            "rejected",
            None,
            f"FCM refused the service account ({status} {label}): check its role and "
            "FCM_PROJECT_ID",
        )
    return Outcome(status, "rejected", None, f"FCM answered {status} {label}")


class FcmChannel:
    """Sends a batch as concurrent HTTP v1 requests; one instance per process (thread-safe:
    several ``send`` calls may run at once in threads or greenlets)."""

    name = "fcm"

    def __init__(
        self,
        tokens: AccessTokens,
        project_id: str,
        *,
        endpoint: str = "https://fcm.googleapis.com",
        ttl: int,
        timeout: float,
        concurrency: int = 16,
    ) -> None:
        if not (0 < timeout < math.inf):
            raise ValueError("a finite positive timeout is required: hanging requests pile up")
        self.access_tokens = tokens
        self.project_id = project_id
        parts = urlsplit(endpoint.rstrip("/"))
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("the FCM endpoint must be an https URL")
        project = quote(project_id, safe="")
        self.url = f"https://{parts.netloc}{parts.path}/v1/projects/{project}/messages:send"
        self._ttl = int(ttl)
        self._timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))
        # Sent directly, like Web Push: proxy variables are not read.
        self.http = Http2Client(
            name="fcm",
            timeout=self._timeout,
            concurrency=self.concurrency,
            user_agent="beacon-push/1",
        )

    @classmethod
    def from_settings(cls, s: Settings) -> FcmChannel:
        if not s.fcm_enabled:
            raise RuntimeError(
                "FCM is disabled: FCM_SERVICE_ACCOUNT_FILE and FCM_PROJECT_ID are required"
            )
        path, project_id = s.fcm_service_account_file, s.fcm_project_id
        assert path is not None and project_id is not None
        try:
            tokens = AccessTokens.from_file(path, timeout=s.push_request_timeout)
        except (OSError, ValueError) as exc:  # missing, unreadable, not a service account
            raise RuntimeError(
                f"FCM_SERVICE_ACCOUNT_FILE {path} is not a readable Google service-account "
                f"key ({type(exc).__name__})"
            ) from None
        return cls(
            tokens,
            project_id,
            endpoint=s.fcm_endpoint,
            ttl=s.push_ttl,
            timeout=s.push_request_timeout,
            concurrency=s.push_send_concurrency,
        )

    # -- public API ----------------------------------------------------------------------------
    def send(self, items: Sequence[Item]) -> list[Outcome]:
        """One outcome per item, in order. Up to ``concurrency`` requests are in flight; each
        is given up (``retry``) when its deadline passes, so a call lasts at most about
        ``ceil(n / concurrency)`` deadlines (and the access token's fetch, when due)."""
        results: list[Outcome | None] = [None] * len(items)
        jobs: list[tuple[int, str, bytes]] = []
        now = time.time()
        for i, item in enumerate(items):
            try:
                message = build_message(item, ttl=self._ttl, now=now)
            except ValueError:
                results[i] = Outcome(
                    None, "rejected", None, f"notification larger than FCM's {FCM_DATA_LIMIT} bytes"
                )
                continue
            jobs.append((i, item.address.token, encoding.dumps({"message": message})))
        if jobs:
            outcomes = self._send_all([(token, body) for _, token, body in jobs])
            for (i, _, _), outcome in zip(jobs, outcomes, strict=True):
                results[i] = outcome
        return [r if r is not None else self._deadline() for r in results]

    def close(self) -> None:
        """Close the connection, the client's loop thread and the token session."""
        self.http.close()
        self.access_tokens.close()

    def __enter__(self) -> FcmChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _send_all(self, jobs: list[tuple[str, bytes]]) -> list[Outcome]:
        """Post (device token, body) pairs with the current access token; a plain 401 gets a
        fresh one (refreshed once for all: ``refresh_if_current``) and one more try."""
        try:
            access = self.access_tokens.get()
        except Exception as exc:  # noqa: BLE001 - every message gets the same outcome
            return [_token_failure(exc)] * len(jobs)
        used = [access]  # access tokens sent: kept out of every reason
        refused: dict[int, Outcome] = {}  # id(request) -> why no fresh token came

        def again(request: Request, answer: Answer) -> Request | None:
            if answer.status != 401 or _Error(answer.body).has("THIRD_PARTY_AUTH_ERROR"):
                return None
            stale = request.headers["authorization"].removeprefix("Bearer ")
            try:
                self.access_tokens.refresh_if_current(stale)  # revoked or expired early
                fresh = self.access_tokens.get()
            except Exception as exc:  # noqa: BLE001 - the outcome says what failed
                refused[id(request)] = _token_failure(exc)
                return None
            used.append(fresh)
            return request._replace(headers={**request.headers, "authorization": f"Bearer {fresh}"})

        headers = {
            "authorization": f"Bearer {access}",
            "content-type": "application/json; charset=UTF-8",
        }
        requests = [Request(self.url, headers, body) for _, body in jobs]
        answers = self.http.exchange_all(requests, again=again)
        outcomes = []
        for (token, _), request, answer in zip(jobs, requests, answers, strict=True):
            failure = refused.get(id(request))
            if failure is not None:
                outcomes.append(failure)
            elif isinstance(answer, Failure):
                if answer.kind == DEADLINE_PASSED:
                    outcomes.append(self._deadline())
                else:
                    outcomes.append(Outcome(None, "retry", None, f"network error: {answer.kind}"))
            else:
                retry_after = parse_retry_after(answer.retry_after, time.time())
                outcomes.append(_outcome(answer.status, answer.body, retry_after, (token, *used)))
        return outcomes

    def _deadline(self) -> Outcome:
        return Outcome(None, "retry", None, f"no answer within {self._timeout:g}s")


def _token_failure(exc: Exception) -> Outcome:
    """The outcome of a message whose access token could not be had."""
    if isinstance(exc, google.auth.exceptions.TransportError):
        return Outcome(None, "retry", None, f"access token: network error ({type(exc).__name__})")
    if isinstance(exc, google.auth.exceptions.RefreshError):
        if exc.retryable:
            return Outcome(None, "retry", None, "access token: token endpoint failing")
        return Outcome(
            None,
            "rejected",
            None,
            "access token refused by the token endpoint: check FCM_SERVICE_ACCOUNT_FILE",
        )
    log.error("FCM access token failed", exc_info=exc)  # a bug: retried later
    return Outcome(None, "retry", None, "internal error")
