#!/usr/bin/env python3
"""A product's backend driving Beacon through the integration API: the worked example of
docs/INTEGRATION.md, meant to be read and copied.

Your product owns its users, teams and conversations; Beacon knows them only by your ids. So
the backend provisions them (PUT, create-or-replace: safe to repeat), hands each browser a
Beacon token instead of signing JWTs itself, posts system messages with an idempotency key (a
retry after a lost answer never posts twice), and learns what happened through signed
webhooks, which it must verify before trusting. Only the standard library and ``requests``.

    BEACON_URL=http://127.0.0.1:5000 BEACON_API_KEY=bk_... python examples/product_backend.py

Exits 0 when every step worked, 1 otherwise (the reason on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

WEBHOOK_PATH = "/beacon/webhooks"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


# -- verifying a webhook ---------------------------------------------------------------------
def verify_signature(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """Whether ``header`` (the ``Beacon-Signature`` of a delivery) signs the raw ``body`` with
    the webhook's ``secret`` and was made at most ``tolerance`` seconds from now.

    The header is ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``. Sign the
    bytes as received (not re-serialized JSON), compare in constant time, and refuse old
    timestamps so that a captured request cannot be replayed later.
    """
    fields: dict[str, str] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    timestamp, signature = fields.get("t", ""), fields.get("v1", "")
    if not _UNIX_SECONDS.fullmatch(timestamp) or not _HEX_SHA256.fullmatch(signature):
        return False
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    signed = timestamp.encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


# -- calling Beacon --------------------------------------------------------------------------
class BeaconError(Exception):
    """Beacon refused a call (or could not be reached): what to print and exit with."""


class Beacon:
    """The integration API with one service key (``Authorization: Bearer bk_...``)."""

    def __init__(self, url: str, key: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"  # a call's own header wins
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> requests.Response:
        """``method path`` with the key (or a user's ``token``); any answer but 2xx raises
        ``BeaconError`` with Beacon's error code (``{"error": code, "message": text}``)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            answer = self.session.request(
                method, self.url + path, json=body, headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise BeaconError(f"{method} {path}: Beacon is unreachable ({exc})") from None
        if not answer.ok:
            try:
                error = answer.json()
                reason = f"{error['error']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                reason = answer.text[:200]
            raise BeaconError(f"{method} {path}: {answer.status_code} {reason}")
        return answer


# -- receiving webhooks ----------------------------------------------------------------------
@dataclass(frozen=True)
class Delivery:
    """One verified webhook request."""

    event_id: str
    type: str
    data: dict[str, Any]


class WebhookReceiver:
    """A tiny webhook endpoint on its own thread: verifies each request, answers at once
    (2xx: delivered; 400: refused, Beacon does not retry it), keeps what it verified."""

    def __init__(self, host: str, port: int) -> None:
        self.secret: str | None = None  # known once the webhook is registered
        self.deliveries: list[Delivery] = []
        self.refused = 0
        self.arrived = threading.Event()  # set after each request
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{WEBHOOK_PATH}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _receive(self, header: str, body: bytes) -> int:
        """The status to answer a delivery with; a verified one is kept."""
        if self.secret is None:
            return 503  # not ready yet: Beacon retries later
        if not verify_signature(self.secret, header, body):
            print("webhook request refused: bad or expired signature", file=sys.stderr)
            with self._lock:
                self.refused += 1
            return 400
        event = json.loads(body)
        with self._lock:
            # The event id is the same on every retry: keep each event once.
            if all(d.event_id != event["id"] for d in self.deliveries):
                self.deliveries.append(Delivery(event["id"], event["type"], event["data"]))
        return 204

    def wait_for(
        self, event_type: str, wanted: Callable[[dict[str, Any]], bool], timeout: float
    ) -> Delivery:
        """The first verified ``event_type`` whose data is ``wanted``; waits at most
        ``timeout`` seconds, woken by each request that arrives."""
        deadline = time.monotonic() + timeout
        while True:
            self.arrived.clear()  # before looking: any request from now on wakes us again
            with self._lock:
                for d in self.deliveries:
                    if d.type == event_type and wanted(d.data):
                        return d
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.arrived.wait(remaining):
                raise BeaconError(
                    f"no matching {event_type} webhook within {timeout:g}s "
                    f"({len(self.deliveries)} verified, {self.refused} refused); is the "
                    "webhooks worker running?"
                )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = 404
                if self.path == WEBHOOK_PATH:
                    status = receiver._receive(self.headers.get("Beacon-Signature", ""), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.arrived.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the summary says what arrived

        return Handler


# -- the product's day -----------------------------------------------------------------------
# The product's own ids (its database keys, slugs...): letters, digits and . _ : @ + -
# (not . or .. alone)
ANN, BEN = "acme-user-1001", "acme-user-1002"
ROOM, TOPIC = "acme-account-42", "acme-order-5521"


def run(beacon: Beacon, receiver: WebhookReceiver, webhook_url: str, timeout: float) -> None:
    # 1. Register a webhook for new messages. The secret is shown only now: store it.
    hook = beacon.call(
        "POST", "/api/admin/webhooks", {"url": webhook_url, "events": ["message.created"]}
    ).json()
    receiver.secret = hook["secret"]
    print(f"webhook {hook['id']} registered for message.created at {webhook_url}")
    try:
        provision_and_publish(beacon, receiver, timeout)
    finally:
        # This receiver goes away with the script, and a hook nobody answers is disabled
        # after WEBHOOK_DISABLE_AFTER failed deliveries. A real product keeps its hook.
        try:
            beacon.call("DELETE", f"/api/admin/webhooks/{hook['id']}")
        except BeaconError as exc:
            print(f"warning: the webhook was not deleted: {exc}", file=sys.stderr)


def provision_and_publish(beacon: Beacon, receiver: WebhookReceiver, timeout: float) -> None:
    # 2. Users, by the product's ids. PUT creates (201) or replaces (200): a field left out
    #    becomes null, so always send the whole user. Running this script again updates them.
    people = {
        ANN: {"username": "ann.acme", "display_name": "Ann (Acme support)"},
        BEN: {"username": "ben.acme", "display_name": "Ben", "email": "ben@acme.test"},
    }
    for external_id, fields in people.items():
        answer = beacon.call("PUT", f"/api/admin/users/{external_id}", fields)
        state = "created" if answer.status_code == 201 else "updated"
        print(f"user {external_id} is Beacon user {answer.json()['id']} ({state})")

    # 3. A room (a customer account, a team...) and a topic in it (a conversation).
    room = beacon.call("PUT", f"/api/admin/rooms/{ROOM}", {"name": "Acme Corp"}).json()
    topic = beacon.call(
        "PUT", f"/api/admin/rooms/{ROOM}/topics/{TOPIC}", {"name": "Order #5521"}
    ).json()
    print(f"topic {TOPIC} is Beacon topic {topic['id']} in room {room['name']!r}")

    # 4. Members. Each one's open connections get `topic_added` at once.
    for external_id in people:
        beacon.call("PUT", f"/api/admin/topics/{TOPIC}/members/{external_id}")
    print(f"members of {TOPIC}: {', '.join(people)}")

    # 5. A token for Ann's browser, handed over after the product's own login. The client
    #    connects with io(BEACON_URL, {auth: {token}}) and calls the user routes with it.
    minted = beacon.call("POST", f"/api/admin/users/{ANN}/token", {"ttl": 3600}).json()
    print(f"token for {ANN} (expires {minted['expires_at']}): {minted['token']}")
    listed = beacon.call("GET", "/api/topics", token=minted["token"]).json()["topics"]
    if topic["id"] not in [row["topic_id"] for row in listed]:
        raise BeaconError(f"GET /api/topics with {ANN}'s token does not list {TOPIC}")
    print(f"GET /api/topics with that token lists {TOPIC}")

    # 6. Publish as Ben. The idempotency key names the product event behind the message
    #    (here: order 5521 shipped); the run id only keeps separate runs of this script apart.
    request = {
        "topic": TOPIC,
        "sender": BEN,
        "message": "Your order #5521 has shipped.",
        "idempotency_key": f"order-5521-shipped-{uuid.uuid4().hex[:12]}",
    }
    message = beacon.call("POST", "/api/admin/messages", request).json()
    # Say the answer was lost: send the very same request again. Beacon answers with the
    # first message (same id) marked as a replay, and posts nothing new.
    retry = beacon.call("POST", "/api/admin/messages", request)
    if retry.json()["id"] != message["id"] or retry.headers.get("Idempotent-Replayed") != "true":
        raise BeaconError(f"the retry was not a replay of message {message['id']}: {retry.text}")
    print(f"message {message['id']} published; the retry got it back (Idempotent-Replayed)")

    # 7. Beacon POSTs message.created to the receiver, which verified its signature.
    delivery = receiver.wait_for(
        "message.created", lambda data: data["message"]["id"] == message["id"], timeout
    )
    print(f"webhook event {delivery.event_id} received")

    print()
    print("Summary")
    print(f"  users:   {', '.join(f['username'] for f in people.values())} provisioned")
    print(f"  topic:   {topic['name']} ({TOPIC}), 2 members")
    print(f"  token:   minted for {ANN}, accepted by GET /api/topics")
    print(f"  message: {message['id']} published once, the retry replayed it")
    print(f"  webhook: message.created for message {message['id']}, signature verified")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("BEACON_URL", "http://127.0.0.1:5000"),
        help="Beacon's base URL (env BEACON_URL; default %(default)s)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("BEACON_API_KEY"),
        help="a service key of scope admin (env BEACON_API_KEY)",
    )
    parser.add_argument(
        "--listen",
        type=_host_port,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="where the webhook receiver listens (default 127.0.0.1:0, a free port)",
    )
    parser.add_argument(
        "--webhook-url",
        help="the URL Beacon should POST to, if not the receiver's own address "
        "(Beacon in a container, a tunnel)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the webhook (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("a service key is needed: --key or BEACON_API_KEY")

    try:
        receiver = WebhookReceiver(*args.listen)
    except OSError as exc:
        print(f"error: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}", file=sys.stderr)
        return 1
    try:
        with receiver:
            url = args.webhook_url or receiver.address
            run(Beacon(args.url, args.key), receiver, url, args.timeout)
    except BeaconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if "forbidden_host" in str(exc) or "insecure_url" in str(exc):
            print(
                "hint: Beacon POSTs only to https URLs on public addresses; for this local "
                "receiver start Beacon with WEBHOOK_ALLOWED_HOSTS=127.0.0.1 (or host:port)",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
