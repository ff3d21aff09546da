"""A local push service that behaves like a browser vendor's (Mozilla autopush, FCM).

Why: the sender's encryption, VAPID signing and error handling can only be trusted if something
independent decrypts and verifies them over real HTTP. This service plays both halves of the
browser vendor:

* the browser: ``new_subscription()`` makes a fresh P-256 key pair and 16-byte auth secret and
  returns the ``PushSubscription`` JSON, keeping the private key to decrypt;
* the push service: ``POST /push/<id>`` checks ``Authorization: vapid t=..., k=...`` (ES256
  signature against ``k``, ``aud`` = our origin, ``exp`` in the future and at most 24 h ahead,
  ``sub`` a mailto:/https: URL), requires ``Content-Encoding: aes128gcm`` and ``TTL``, decrypts
  the body (http_ece) and records it, answering 201. Unknown ids get 404, unsubscribed ones 410.

Tests script failures per subscription (``[{"status": 429, "retry_after": 2}, {"status": 201}]``
or a sticky status) and read back what arrived. Admin HTTP API (JSON):

* ``POST /_admin/subscriptions`` -> 201 subscription JSON (plus ``id``);
* ``DELETE /_admin/subscriptions/<id>`` -> 204, later pushes get 410 Gone;
* ``POST /_admin/behaviour/<id>`` with ``{"script": [...], "sticky": {...} | null}`` or a list;
* ``GET /_admin/messages/<id>`` -> messages, attempts (including refused ones), refusals;
* ``GET /_admin/stats`` -> counts for every subscription, and TCP connections accepted.

Run it alone with ``python -m tests.pushservice.server --port 0``: it prints its base URL on the
first line of stdout, then serves until SIGTERM/SIGINT. Verified JWTs are cached by token string
(as real push services do) so the service keeps up with a fast sender in benchmarks.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import ipaddress
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import http_ece
import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

MAX_PUSH_BODY = 4096  # RFC 8030/8291: a push service must accept at least this, may refuse more
MAX_ADMIN_BODY = 64 * 1024
MAX_JWT_LIFETIME = 24 * 3600
URGENCIES = frozenset({"very-low", "low", "normal", "high"})
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
_CURVE = ec.SECP256R1()
REPO_ROOT = Path(__file__).resolve().parents[2]

Reply = tuple[int, dict[str, str], bytes]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def subscription_id(sub: str | dict[str, Any]) -> str:
    """The id of a subscription given as its id, its endpoint URL or its JSON."""
    if isinstance(sub, dict):
        sub = str(sub.get("id") or sub["endpoint"])
    return sub.rstrip("/").rsplit("/", 1)[-1]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An autopush-style JSON error body."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = json.dumps({"code": status, "error": phrase, "message": message}).encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, body


@dataclass
class _Subscription:
    id: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    p256dh: str
    auth_b64: str
    application_server_key: bytes | None = None
    gone: bool = False
    attempts: int = 0
    delivered: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    script: deque[dict[str, Any]] = field(default_factory=deque)
    sticky: dict[str, Any] | None = None


def _normalise_step(step: Any) -> dict[str, Any]:
    if isinstance(step, int) and not isinstance(step, bool):
        step = {"status": step}
    if not isinstance(step, dict) or not isinstance(step.get("status"), int):
        raise ValueError('each response must be {"status": int, ...} or an int')
    if not 200 <= step["status"] <= 599:
        raise ValueError("status must be 200..599")
    if not isinstance(step.get("headers") or {}, dict):
        raise ValueError("headers must be an object")
    return dict(step)


class PushService:
    """The push service's state and logic; HTTP is a thin layer over it (``_Handler``)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the local push service only binds loopback addresses")
        self.clock = clock
        self._lock = threading.Lock()
        self._subs: dict[str, _Subscription] = {}
        self._unknown_attempts = 0
        self._jwt_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._key_cache: dict[str, ec.EllipticCurvePublicKey] = {}
        self._server = _Server((host, port), _Handler, self)
        bound_host, bound_port = self._server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        self.origin = f"http://{shown}:{bound_port}"
        self.base_url = self.origin
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> PushService:
        """Serve in a background daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-push-service", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop accepting, drop open keep-alive connections, free the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.close_connections()
        self._server.server_close()

    def __enter__(self) -> PushService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the "browser" side --------------------------------------------------------------------
    def new_subscription(self, application_server_key: str | None = None) -> dict[str, Any]:
        """Subscribe like a browser: new key pair + auth secret, return the PushSubscription JSON.

        With ``application_server_key`` the subscription only accepts pushes signed by that
        VAPID key (others get 403), as ``PushManager.subscribe`` subscriptions do.
        """
        private_key = ec.generate_private_key(_CURVE)
        p256dh = _b64url(
            private_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        auth = os.urandom(16)
        sub = _Subscription(
            id=uuid.uuid4().hex + uuid.uuid4().hex,
            private_key=private_key,
            auth=auth,
            p256dh=p256dh,
            auth_b64=_b64url(auth),
            application_server_key=_unb64url(application_server_key)
            if application_server_key
            else None,
        )
        with self._lock:
            self._subs[sub.id] = sub
        return self._subscription_json(sub)

    def _subscription_json(self, sub: _Subscription) -> dict[str, Any]:
        return {
            "endpoint": f"{self.base_url}/push/{sub.id}",
            "expirationTime": None,
            "keys": {"p256dh": sub.p256dh, "auth": sub.auth_b64},
            "id": sub.id,
        }

    def unsubscribe(self, sub_id: str) -> None:
        with self._lock:
            self._get(sub_id).gone = True

    # -- scripting and inspection --------------------------------------------------------------
    def set_behaviour(
        self,
        sub_id: str,
        script: list[Any] | None = None,
        sticky: dict[str, Any] | int | None = None,
    ) -> None:
        """Answer the next pushes with ``script`` (then normally), or always with ``sticky``.

        A step is ``{"status": 429, "retry_after": 2, "body": "...", "headers": {...}}`` (or
        just the status). A 2xx step means "process normally, answer with this status".
        ``"delay": seconds`` holds the answer that long first (a slow push service).
        """
        steps = deque(_normalise_step(s) for s in (script or []))
        sticky_step = None if sticky is None else _normalise_step(sticky)
        with self._lock:
            sub = self._get(sub_id)
            sub.script = steps
            sub.sticky = sticky_step

    def record(self, sub_id: str) -> dict[str, Any]:
        with self._lock:
            sub = self._get(sub_id)
            return {
                "id": sub.id,
                "attempts": sub.attempts,
                "delivered": sub.delivered,
                "refused": sub.attempts - sub.delivered,
                "messages": list(sub.messages),
                "refusals": list(sub.refusals),
            }

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "subscriptions": {
                    s.id: {
                        "attempts": s.attempts,
                        "delivered": s.delivered,
                        "refused": s.attempts - s.delivered,
                    }
                    for s in self._subs.values()
                },
                "unknown_attempts": self._unknown_attempts,
                "connections": self._server.connections_accepted,
            }

    def _get(self, sub_id: str) -> _Subscription:
        try:
            return self._subs[sub_id]
        except KeyError:
            raise KeyError(f"no subscription {sub_id!r}") from None

    # -- the push service side -----------------------------------------------------------------
    def handle_push(self, sub_id: str, headers: Any, body: bytes) -> Reply:
        """One ``POST /push/<id>``: scripted answer, or verify, decrypt and record."""
        with self._lock:
            sub = self._subs.get(sub_id)
            if sub is None:
                self._unknown_attempts += 1
                return _error(404, "no such subscription")
            sub.attempts += 1
            step = sub.script.popleft() if sub.script else sub.sticky
        if sub.gone:
            return self._refuse(sub, _error(410, "subscription has been unsubscribed"))
        if step is not None and step.get("delay"):
            time.sleep(float(step["delay"]))  # a slow push service: the answer comes late
        if step is not None and not 200 <= step["status"] < 300:
            extra = {str(k): str(v) for k, v in (step.get("headers") or {}).items()}
            if step.get("retry_after") is not None:
                extra["Retry-After"] = str(step["retry_after"])
            if "body" in step:
                reply: Reply = (step["status"], extra, str(step["body"]).encode())
            else:
                reply = _error(step["status"], "scripted response", extra)
            return self._refuse(sub, reply)

        refusal = self._check_request(sub, headers, body)
        if refusal is not None:
            return self._refuse(sub, refusal)
        try:
            plaintext = http_ece.decrypt(
                body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
            )
        except Exception as exc:  # http_ece raises several types on garbage
            return self._refuse(sub, _error(400, f"decryption failed: {type(exc).__name__}"))

        token = headers.get("Authorization", "")
        message = {
            "payload": plaintext.decode("utf-8", "replace"),
            "payload_b64": _b64url(plaintext),
            "ttl": int(headers["TTL"]),
            "urgency": headers.get("Urgency"),
            "topic": headers.get("Topic"),
            "received_at": self.clock(),
            "vapid_token": _vapid_params(token).get("t"),
        }
        status = step["status"] if step is not None else 201
        with self._lock:
            sub.delivered += 1
            sub.messages.append(message)
        location = f"{self.base_url}/m/{uuid.uuid4().hex}"
        return status, {"Location": location}, b""

    def _refuse(self, sub: _Subscription, reply: Reply) -> Reply:
        with self._lock:
            sub.refusals.append({"status": reply[0], "body": reply[2].decode("utf-8", "replace")})
        return reply

    def _check_request(self, sub: _Subscription, headers: Any, body: bytes) -> Reply | None:
        refusal = self._check_vapid(sub, headers.get("Authorization"))
        if refusal is not None:
            return refusal
        if (headers.get("Content-Encoding") or "").strip().lower() != "aes128gcm":
            return _error(400, "Content-Encoding must be aes128gcm")
        ttl = headers.get("TTL")
        if ttl is None or not ttl.strip().isdigit():
            return _error(400, "missing or invalid TTL header")
        urgency = headers.get("Urgency")
        if urgency is not None and urgency not in URGENCIES:
            return _error(400, "invalid Urgency header")
        topic = headers.get("Topic")
        if topic is not None and not _TOPIC.match(topic):
            return _error(400, "Topic must be at most 32 base64url characters")
        if len(body) > MAX_PUSH_BODY:
            return _error(413, f"payload larger than {MAX_PUSH_BODY} bytes")
        if len(body) < 21 + 65 + 17:
            return _error(400, "body too short for aes128gcm")
        return None

    def _check_vapid(self, sub: _Subscription, authorization: str | None) -> Reply | None:
        """RFC 8292 checks; signature results are cached per (token, key) like real services."""
        if not authorization:
            return _error(401, "missing Authorization header")
        scheme, _, _rest = authorization.strip().partition(" ")
        if scheme.lower() != "vapid":
            return _error(401, "Authorization scheme must be vapid")
        params = _vapid_params(authorization)
        token, key = params.get("t"), params.get("k")
        if not token or not key:
            return _error(401, "vapid Authorization needs t= and k=")
        try:
            key_bytes = _unb64url(key)
        except (binascii.Error, ValueError):
            return _error(401, "k is not base64url")
        if sub.application_server_key is not None and key_bytes != sub.application_server_key:
            return _error(403, "k does not match the subscription's applicationServerKey")
        claims = self._jwt_cache.get((token, key))
        if claims is None:
            public = self._key_cache.get(key)
            if public is None:
                try:
                    public = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, key_bytes)
                except ValueError:
                    return _error(401, "k is not an uncompressed P-256 public key")
            try:
                claims = jwt.decode(
                    token,
                    public,
                    algorithms=["ES256"],
                    options={
                        "verify_exp": False,  # checked below on every request, cached or not
                        "verify_aud": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                    },
                )
            except jwt.InvalidSignatureError:
                return _error(401, "JWT signature does not verify with k")
            except jwt.InvalidTokenError as exc:
                return _error(401, f"malformed JWT: {type(exc).__name__}")
            with self._lock:
                if len(self._jwt_cache) > 10_000:
                    self._jwt_cache.clear()
                self._jwt_cache[(token, key)] = claims
                self._key_cache[key] = public
        now = self.clock()
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            return _error(401, "JWT exp missing")
        if exp <= now:
            return _error(401, "JWT expired")
        if exp - now > MAX_JWT_LIFETIME:
            return _error(401, "JWT exp is more than 24 hours ahead")
        if claims.get("aud") != self.origin:
            return _error(401, f"JWT aud must be {self.origin}")
        sub_claim = claims.get("sub")
        if not isinstance(sub_claim, str) or not sub_claim.startswith(("mailto:", "https:")):
            return _error(401, "JWT sub must be a mailto: or https: URL")
        return None


def _vapid_params(authorization: str) -> dict[str, str]:
    """``vapid t=..., k=...`` (with or without spaces) as ``{"t": ..., "k": ...}``."""
    _, _, rest = authorization.strip().partition(" ")
    params: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            params[name.strip().lower()] = value.strip()
    return params


# -- HTTP layer ------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, service: PushService) -> None:
        self.service = service
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.connections_accepted = 0  # keep-alive check: pooled senders open few
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
            self.connections_accepted += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Headers:
    """Case-insensitive request headers; repeated fields are joined with ", " (RFC 9110)."""

    __slots__ = ("_fields",)

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        key = name.lower()
        old = self._fields.get(key)
        self._fields[key] = value if old is None else f"{old}, {value}"

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._fields.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return self._fields.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real push services
    server_version = "LocalPushService/1.0"
    timeout = 120  # an idle keep-alive connection is dropped after this
    server: _Server
    headers: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def parse_request(self) -> bool:
        """Like the stdlib's, minus ``email.parser``, which cost more than decrypting a push."""
        self.command = None  # type: ignore[assignment]
        self.request_version = "HTTP/0.9"
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3:
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad request line")
            return False
        command, path, version = words
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "Only HTTP/1.x")
            return False
        self.command, self.request_version = command, version
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        headers = _Headers()
        for _ in range(101):
            line = self.rfile.readline(65537)
            if len(line) > 65536:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = line.decode("iso-8859-1").partition(":")
            if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                self.send_error(HTTPStatus.BAD_REQUEST, "Malformed header line")
                return False
            headers.add(name, value.strip())
        else:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
            return False
        self.headers = headers
        connection = (headers.get("Connection") or "").lower()
        if version == "HTTP/1.1":
            self.close_connection = connection == "close"
        else:
            self.close_connection = connection != "keep-alive"
        if (headers.get("Expect") or "").lower() == "100-continue" and version == "HTTP/1.1":
            return bool(self.handle_expect_100())
        return True

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        service = self.server.service
        if path.startswith("/push/"):
            body = self._read_body(MAX_PUSH_BODY * 16)
            if body is None:
                return
            self._send(*service.handle_push(path[len("/push/") :], self.headers, body))
        elif path == "/_admin/subscriptions":
            data = self._read_json()
            if data is _BAD:
                return
            key = data.get("application_server_key") if isinstance(data, dict) else None
            self._send_json(201, service.new_subscription(key))
        elif path.startswith("/_admin/behaviour/"):
            data = self._read_json()
            if data is _BAD:
                return
            if isinstance(data, list):
                data = {"script": data}
            if not isinstance(data, dict):
                self._send(*_error(400, "expected a JSON list or object"))
                return
            try:
                service.set_behaviour(
                    path.rsplit("/", 1)[1], data.get("script"), data.get("sticky")
                )
            except KeyError:
                self._send(*_error(404, "no such subscription"))
            except ValueError as exc:
                self._send(*_error(400, str(exc)))
            else:
                self._send(204, {}, b"")
        else:
            self._read_body(MAX_ADMIN_BODY)
            self._send(*_error(404, "not found"))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        service = self.server.service
        if path.startswith("/_admin/messages/"):
            try:
                self._send_json(200, service.record(path.rsplit("/", 1)[1]))
            except KeyError:
                self._send(*_error(404, "no such subscription"))
        elif path == "/_admin/stats":
            self._send_json(200, service.stats())
        else:
            self._send(*_error(404, "not found"))

    def do_DELETE(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/_admin/subscriptions/"):
            try:
                self.server.service.unsubscribe(path.rsplit("/", 1)[1])
            except KeyError:
                self._send(*_error(404, "no such subscription"))
            else:
                self._send(204, {}, b"")
        else:
            self._send(*_error(404, "not found"))

    def _read_body(self, limit: int) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(*_error(411, "Content-Length required"))
            return None
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0 or size > limit:
            self.close_connection = True
            self._send(*_error(413, "request body too large"))
            return None
        return self.rfile.read(size)

    def _read_json(self) -> Any:
        body = self._read_body(MAX_ADMIN_BODY)
        if body is None:
            return _BAD
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except ValueError:
            self._send(*_error(400, "invalid JSON"))
            return _BAD

    def _send_json(self, status: int, data: Any) -> None:
        self._send(status, {"Content-Type": "application/json"}, json.dumps(data).encode())

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


_BAD = object()


# -- client ----------------------------------------------------------------------------------
class PushServiceClient:
    """Drives a (local or subprocess) push service through its admin HTTP API."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.origin = self.base_url
        self.timeout = timeout
        self.service: PushService | None = None  # set when running in this process
        self.pid: int | None = None  # set when running as a child process
        self._session = requests.Session()
        self._session.trust_env = False  # never send loopback admin calls through a proxy

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self._session.request(
            method, self.base_url + path, timeout=self.timeout, **kwargs
        )
        if response.status_code >= 400:
            raise RuntimeError(
                f"push service {method} {path}: {response.status_code} {response.text}"
            )
        return response

    def new_subscription(self, application_server_key: str | None = None) -> dict[str, Any]:
        """A fresh browser-side subscription: ``{"endpoint", "keys": {"p256dh", "auth"}, ...}``."""
        body = {"application_server_key": application_server_key}
        return self._call("POST", "/_admin/subscriptions", json=body).json()

    def unsubscribe(self, sub: str | dict[str, Any]) -> None:
        self._call("DELETE", f"/_admin/subscriptions/{subscription_id(sub)}")

    def set_behaviour(
        self,
        sub: str | dict[str, Any],
        script: list[Any] | None = None,
        sticky: dict[str, Any] | int | None = None,
    ) -> None:
        """See ``PushService.set_behaviour``; replaces any earlier script and sticky status."""
        body = {"script": script or [], "sticky": sticky}
        self._call("POST", f"/_admin/behaviour/{subscription_id(sub)}", json=body)

    def record(self, sub: str | dict[str, Any]) -> dict[str, Any]:
        """Messages, attempts (refused included), delivered count and refusals of ``sub``."""
        return self._call("GET", f"/_admin/messages/{subscription_id(sub)}").json()

    def messages(self, sub: str | dict[str, Any]) -> list[dict[str, Any]]:
        return self.record(sub)["messages"]

    def attempts(self, sub: str | dict[str, Any]) -> int:
        return self.record(sub)["attempts"]

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_admin/stats").json()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PushServiceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def running_push_service(
    host: str = "127.0.0.1", *, clock: Callable[[], float] = time.time
) -> Iterator[PushServiceClient]:
    """A push service on a free loopback port in a background thread; yields its client."""
    service = PushService(host, 0, clock=clock).start()
    client = PushServiceClient(service.base_url)
    client.service = service
    try:
        yield client
    finally:
        client.close()
        service.stop()


@contextlib.contextmanager
def running_push_service_process(
    host: str = "127.0.0.1", *, startup_timeout: float = 20.0
) -> Iterator[PushServiceClient]:
    """The push service in a child process (its own GIL, for benchmarks); yields its client."""
    # stderr goes to a file, not a pipe nobody reads: a chatty child must never block on it.
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pushservice.server", "--host", host, "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            ready = selector.select(startup_timeout)
        base_url = proc.stdout.readline().strip() if ready else ""
        if not base_url.startswith("http://"):
            proc.kill()
            proc.wait()
            errors.seek(0)
            message = errors.read().decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"push service process did not start: {message}")
        with PushServiceClient(base_url) as client:
            client.pid = proc.pid
            yield client
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        errors.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    service = PushService(args.host, args.port)

    def _stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    print(service.base_url, flush=True)
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
