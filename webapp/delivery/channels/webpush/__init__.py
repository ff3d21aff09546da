"""The Web Push channel (RFC 8030/8291/8292): browsers' push subscriptions.

Split by job: ``subscription`` (the browser's keys and their validation), ``vapid`` (the
deployment's identity), ``ece`` (aes128gcm), ``sender`` (the three together, posting through
``webapp.platform.outbound``: pooled connections, deadline, the address guard).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from config import Settings
from webapp.delivery.channels import encoding
from webapp.delivery.channels.base import Item, Outcome
from webapp.delivery.channels.webpush.ece import MAX_PAYLOAD_BYTES
from webapp.delivery.channels.webpush.sender import Push, PushSender
from webapp.platform.outbound.addresses import LOOKUP_TIMEOUT, TargetError, check_target

log = logging.getLogger(__name__)

# What a user's push history says when the endpoint's host is refused at send time.
REFUSALS = {
    "dns_error": "endpoint host does not resolve",
    "forbidden_host": "endpoint host is not a public address",
    "insecure_endpoint": "endpoint is not https",
    "invalid_endpoint": "endpoint is not a valid URL",
}


class WebPushChannel:
    """Sends a batch through one ``PushSender``: the endpoint's host is checked once per host
    (DNS, public address) right before sending, then every push goes out concurrently."""

    name = "webpush"

    def __init__(
        self,
        sender: PushSender,
        *,
        ttl: int,
        allowed_hosts: tuple[str, ...],
        lookup_timeout: float = LOOKUP_TIMEOUT,
    ) -> None:
        self.sender = sender
        self._ttl = ttl
        self._allowed_hosts = allowed_hosts
        self._lookup_timeout = lookup_timeout

    @classmethod
    def from_settings(cls, s: Settings) -> WebPushChannel:
        if not s.webpush_enabled:
            raise RuntimeError("Web Push is disabled: no VAPID key pair configured")
        # allowed_hosts also checks the address each new connection really reached (DNS
        # rebinding between the send-time check and the connect).
        sender = PushSender(
            s.vapid_private_key,
            s.vapid_subject,
            timeout=s.push_request_timeout,
            concurrency=s.push_send_concurrency,
            allowed_hosts=s.push_allowed_hosts,
        )
        return cls(
            sender,
            ttl=s.push_ttl,
            allowed_hosts=s.push_allowed_hosts,
            lookup_timeout=s.push_request_timeout,
        )

    def send(self, items: Sequence[Item]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        refusals: dict[str, Outcome | None] = {}
        pushes: list[Push] = []
        where: list[int] = []
        bodies: dict[int, bytes] = {}  # a batch's items share a few notifications
        for i, item in enumerate(items):
            keys = item.address
            host = urlsplit(keys.endpoint).netloc
            if host not in refusals:
                refusals[host] = self._refusal(keys.endpoint)
            refusal = refusals[host]
            if refusal is not None:
                results[i] = refusal
                continue
            note = item.notification
            body = bodies.get(id(note))
            if body is None:
                body = bodies[id(note)] = encoding.fit(note.payload, MAX_PAYLOAD_BYTES)
            pushes.append(Push(keys, body, note.urgency, note.collapse_key))
            where.append(i)
        for i, outcome in zip(where, self.sender.send_all(pushes, ttl=self._ttl), strict=True):
            results[i] = outcome
        return [r for r in results if r is not None]

    def _refusal(self, endpoint: str) -> Outcome | None:
        """Why the endpoint's host may not be sent to now. The user sees a generic reason in
        their history; what DNS answered (addresses, resolver errors) only goes to the log."""
        try:
            check_target(endpoint, self._allowed_hosts, timeout=self._lookup_timeout)
        except TargetError as exc:
            log.warning(
                "push endpoint host %s refused (%s): %s",
                urlsplit(endpoint).hostname,
                exc.code,
                exc.message,
            )
            kind = "retry" if exc.code == "dns_error" else "rejected"
            return Outcome(None, kind, None, REFUSALS.get(exc.code, REFUSALS["forbidden_host"]))
        return None
