"""A fake Firebase Cloud Messaging (HTTP v1) and its OAuth2 token endpoint, as a real process.

Why: the FCM channel's token exchange, HTTP/2 multiplexing, TLS and error handling can only be
trusted against something that speaks the protocols over a real socket. This is an ASGI app
served by hypercorn with TLS (ALPN h2, http/1.1), playing both Google services:

* ``POST /token``: the service account's token endpoint. It checks the JWT-bearer grant as
  Google does: RS256 signature with the account's key, ``kid`` = ``private_key_id``, ``iss`` =
  ``client_email``, ``aud`` = Google's token URI (what google-auth signs, whatever the
  account's ``token_uri``) or this one's, ``scope`` with firebase.messaging, ``iat``/``exp``
  sane and at most an hour apart; then hands out an opaque access token for
  ``token_lifetime`` seconds (else 400 ``invalid_grant``/``invalid_scope``).
* ``POST /v1/projects/<project>/messages:send``: a bearer token it issued and that has not
  expired or been revoked (else 401 UNAUTHENTICATED), the project (else 403), the message's
  shape (string data values, no reserved keys, one target, android/apns fields, a
  plausible token, data and notification under 4096 bytes: else 400 INVALID_ARGUMENT with a
  field violation, as FCM answers). Then a scripted answer for that device token (or ``*``),
  or 200 ``{"name": "projects/<p>/messages/<id>"}``, recording the message.

Control API (JSON, same port): ``GET /_control/health``; ``POST /_control/script``
``{"token", "status", "error_code", "error_status", "message", "field", "retry_after", "delay",
"times"}`` (the next ``times`` requests, null: every one; rules queue up in order; ``message``
may hold ``{token}`` and ``{access_token}``, to check that they never reach a reason);
``POST /_control/token_endpoint`` ``{"status", "error", "times"}``; ``POST /_control/config``
``{"token_lifetime"}``; ``POST /_control/revoke`` (every access token issued so far now gets
401); ``GET /_control/records[?token=]`` (accepted messages); ``GET /_control/attempts``
(every send and its answer); ``GET /_control/stats``; ``POST /_control/reset`` (issued access
tokens stay valid). A "connection" is a distinct client address that sent a message.

Counting mode (``--counting``, off by default; for benchmarks, where recording and checking
every message would make the fake the bottleneck): a send still needs a bearer token it issued
and the project, and a message with a plausible ``token``; then it is only counted (no
scripts, no records or attempts, no other checks) and answered 200, after the delay set by
``POST /_control/reset?delay_ms=N`` (0 by default). ``stats`` then also holds ``distinct``
(device tokens), ``first`` and ``last`` (``time.monotonic()`` of the first and last accepted
send: the system's clock, comparable across processes on one machine) and ``counting``.

Run alone: ``python -m tests.fakes.fcm --port N --certfile C --keyfile K --service-account
SA.json [--token-lifetime S] [--max-requests N] [--counting]``. Tests use
``running_fake_fcm()``: it makes the service account, the certificates and the process, and
yields a ``FakeFcm`` client with the settings Beacon needs (``env()``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes import FakeService, serve_tls
from tests.harness.certs import make_certs
from tests.harness.ports import free_port
from tests.harness.processes import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
MAX_ASSERTION_LIFETIME = 3600
CLOCK_SKEW = 60
MAX_DATA_BYTES = 4096
MAX_REQUEST_BODY = 64 * 1024
_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send\Z")
_DEVICE_TOKEN = re.compile(r"[A-Za-z0-9_:\-]{32,4096}\Z")
_DURATION = re.compile(r"\d{1,10}(\.\d{1,9})?s\Z")
_MESSAGE_KEYS = frozenset(
    {"name", "data", "notification", "android", "webpush", "apns", "fcm_options"}
    | {"token", "topic", "condition"}
)
_RESERVED_DATA = frozenset({"from", "message_type", "notification"})
_DEFAULT_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Quota exceeded."),
    500: ("INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "The service is currently unavailable."),
}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Reply = tuple[int, dict[str, str], bytes]


def device_token() -> str:
    """A new token shaped like FCM's (instance id, colon, ``APA91b`` and 134 characters)."""
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(101)[:134]}"


def rpc_error(
    code: int,
    status: str | None = None,
    message: str | None = None,
    *,
    error_code: str | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    """A google.rpc error body as FCM sends it (``details``: FcmError, BadRequest)."""
    default_status, default_message = _DEFAULT_ERRORS.get(code, ("UNKNOWN", "Unknown error."))
    message = default_message if message is None else message
    details: list[dict[str, Any]] = []
    if error_code:
        details.append(
            {
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": error_code,
            }
        )
    if field:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }
        )
    error = {"code": code, "message": message, "status": status or default_status}
    if details:
        error["details"] = details
    return {"error": error}


def _json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    head = {"content-type": "application/json; charset=UTF-8", **(headers or {})}
    return status, head, json.dumps(body).encode()


def _violation(message: Any) -> tuple[str | None, str] | None:
    """The first thing FCM would refuse in ``message``: (field or None, description)."""
    if not isinstance(message, dict):
        return "message", "message must be an object"
    unknown = set(message) - _MESSAGE_KEYS
    if unknown:
        return None, f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}"'
    targets = [k for k in ("token", "topic", "condition") if k in message]
    if len(targets) != 1:
        return "message", "exactly one of token, topic or condition is required"
    token = message.get("token")
    if not isinstance(token, str) or not _DEVICE_TOKEN.match(token):
        return "message.token", "The registration token is not a valid FCM registration token"
    size = 0
    data = message.get("data", {})
    if not isinstance(data, dict):
        return "message.data", "data must be a map"
    for key, value in data.items():
        if not isinstance(value, str):
            return f"message.data[{key}]", "data values must be strings"
        if key.lower() in _RESERVED_DATA or key.lower().startswith(("google", "gcm")):
            return f"message.data[{key}]", "reserved key"
        size += len(key.encode()) + len(value.encode())
    notification = message.get("notification", {})
    if not isinstance(notification, dict) or set(notification) - {"title", "body", "image"}:
        return "message.notification", "notification holds title, body, image"
    for key, value in notification.items():
        if not isinstance(value, str):
            return f"message.notification.{key}", "must be a string"
        size += len(value.encode())
    if size > MAX_DATA_BYTES:
        return None, f"Message is too big: {size} > {MAX_DATA_BYTES} bytes of data"
    android = message.get("android", {})
    if not isinstance(android, dict):
        return "message.android", "must be an object"
    if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
        return "message.android.priority", "NORMAL or HIGH"
    if "ttl" in android and not (
        isinstance(android["ttl"], str) and _DURATION.match(android["ttl"])
    ):
        return "message.android.ttl", "a duration such as 3.5s"
    if not isinstance(android.get("collapse_key", ""), str):
        return "message.android.collapse_key", "must be a string"
    android_note = android.get("notification", {})
    if not isinstance(android_note, dict):
        return "message.android.notification", "must be an object"
    count = android_note.get("notification_count", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return "message.android.notification.notification_count", "a non-negative integer"
    apns = message.get("apns", {})
    if not isinstance(apns, dict):
        return "message.apns", "must be an object"
    headers = apns.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return "message.apns.headers", "a map of strings"
    if headers.get("apns-priority", "10") not in ("5", "10"):
        return "message.apns.headers", "apns-priority is 5 or 10"
    if len(headers.get("apns-collapse-id", "").encode()) > 64:
        return "message.apns.headers", "apns-collapse-id is at most 64 bytes"
    payload = apns.get("payload", {"aps": {}})
    if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
        return "message.apns.payload", "payload.aps must be an object"
    return None


class _Rule:
    """A scripted answer for the next ``times`` requests (None: every one)."""

    def __init__(self, answer: dict[str, Any], times: int | None) -> None:
        self.answer = answer
        self.times = times


class FakeFcmState:
    """Everything the fake knows; one event loop uses it (no locking needed)."""

    def __init__(
        self, account: dict[str, Any], *, token_lifetime: int, counting: bool = False
    ) -> None:
        key = serialization.load_pem_private_key(account["private_key"].encode(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.public_key = key.public_key()
        self.key_id: str = account["private_key_id"]
        self.client_email: str = account["client_email"]
        self.project_id: str = account["project_id"]
        self.token_uri: str = account["token_uri"]
        self.default_lifetime = token_lifetime
        self.issued: dict[str, float] = {}  # access token -> expiry (time.time)
        self.counting = counting
        self.delay = 0.0  # counting mode: seconds before each answer
        self.reset()

    def reset(self) -> None:
        self.token_lifetime = self.default_lifetime
        self.rules: dict[str, deque[_Rule]] = {}
        self.token_rules: deque[_Rule] = deque()
        self.records: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()
        self.access_tokens_seen: set[str] = set()
        self.connections: set[tuple[str, int]] = set()
        self.http_versions: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.tokens: set[str] = set()  # counting mode: distinct device tokens
        self.first: float | None = None  # counting mode: time.monotonic() of the first send
        self.last: float | None = None

    def stats(self) -> dict[str, Any]:
        counting = (
            {"counting": True, "distinct": len(self.tokens), "first": self.first, "last": self.last}
            if self.counting
            else {}
        )
        return {
            "token_grants": self.counters["token_grants"],
            "token_refusals": self.counters["token_refusals"],
            "sends": self.counters["sends"],
            "delivered": self.counters["delivered"],
            "unauthenticated": self.counters["unauthenticated"],
            "access_tokens_seen": len(self.access_tokens_seen),
            "connections": len(self.connections),
            "http_versions": dict(self.http_versions),
            "max_in_flight": self.max_in_flight,
            **counting,
        }

    @staticmethod
    def _take(rules: deque[_Rule] | None) -> dict[str, Any] | None:
        if not rules:
            return None
        rule = rules[0]
        if rule.times is not None:
            rule.times -= 1
            if rule.times <= 0:
                rules.popleft()
        return rule.answer

    # -- the token endpoint ------------------------------------------------------------------
    def grant(self, body: bytes) -> Reply:
        scripted = self._take(self.token_rules)
        if scripted is not None:
            self.counters["token_refusals"] += 1
            error = {"error": scripted.get("error") or "server_error"}
            return _json_reply(int(scripted.get("status") or 500), error)
        form = parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type") != [JWT_BEARER]:
            self.counters["token_refusals"] += 1
            return _json_reply(400, {"error": "unsupported_grant_type"})
        refusal = self._check_assertion((form.get("assertion") or [""])[0])
        if refusal is not None:
            self.counters["token_refusals"] += 1
            return _json_reply(400, refusal)
        access = "fake-at." + secrets.token_urlsafe(32)
        self.issued[access] = time.time() + self.token_lifetime
        self.counters["token_grants"] += 1
        answer = {"access_token": access, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        return _json_reply(200, answer, {"cache-control": "no-store"})

    def _check_assertion(self, assertion: str) -> dict[str, str] | None:
        def invalid(why: str) -> dict[str, str]:
            return {"error": "invalid_grant", "error_description": f"Invalid JWT: {why}"}

        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                audience=[GOOGLE_TOKEN_URI, self.token_uri],
                issuer=self.client_email,
                leeway=CLOCK_SKEW,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            return invalid(type(exc).__name__)
        if header.get("kid") != self.key_id:
            return invalid("unknown key id")
        now = time.time()
        if claims["iat"] > now + CLOCK_SKEW:
            return invalid("iat is in the future")
        if claims["exp"] - claims["iat"] > MAX_ASSERTION_LIFETIME:
            return invalid("Token must be a short-lived token (60 minutes)")
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return {"error": "invalid_scope", "error_description": "firebase.messaging missing"}
        return None

    # -- the send endpoint -------------------------------------------------------------------
    async def send(self, scope: Scope, project: str, auth: str, body: bytes) -> Reply:
        self.counters["sends"] += 1
        self.http_versions[str(scope.get("http_version"))] += 1
        client = scope.get("client")
        if client:
            self.connections.add((str(client[0]), int(client[1])))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.counting:
                return await self._count(project, auth, body)
            reply, token = await self._send(project, auth, body)
        finally:
            self.in_flight -= 1
        self.attempts.append({"token": token, "status": reply[0], "answer": json.loads(reply[2])})
        return reply

    def _authorized(self, project: str, auth: str) -> tuple[Reply | None, str]:
        """(401/403 reply or None, access token): a bearer token issued here, not expired or
        revoked, for this project."""
        scheme, _, access = auth.partition(" ")
        expiry = self.issued.get(access) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.time():
            self.counters["unauthenticated"] += 1
            return _json_reply(401, rpc_error(401)), access
        self.access_tokens_seen.add(access)
        if project != self.project_id:
            message = f"Permission 'cloudmessaging.messages.create' denied on project {project}"
            return _json_reply(403, rpc_error(403, message=message)), access
        return None, access

    async def _count(self, project: str, auth: str, body: bytes) -> Reply:
        """Counting mode: the bearer token and project as always, a plausible device token;
        then counted and accepted."""
        refusal, _ = self._authorized(project, auth)
        if refusal is not None:
            return refusal
        try:
            token = json.loads(body)["message"]["token"]
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not _DEVICE_TOKEN.match(token):
            why = "The registration token is not a valid FCM registration token"
            code = "INVALID_ARGUMENT"
            return _json_reply(
                400, rpc_error(400, message=why, error_code=code, field="message.token")
            )
        now = time.monotonic()
        self.first = now if self.first is None else self.first
        self.last = now
        self.counters["delivered"] += 1
        self.tokens.add(token)
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        return _json_reply(200, {"name": f"projects/{project}/messages/{uuid.uuid4().hex}"})

    async def _send(self, project: str, auth: str, body: bytes) -> tuple[Reply, str | None]:
        refusal, access = self._authorized(project, auth)
        if refusal is not None:
            return refusal, None
        try:
            message = json.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            return _json_reply(400, rpc_error(400, message="Invalid JSON payload received.")), None
        violation = _violation(message)
        token = message.get("token") if isinstance(message, dict) else None
        token = token if isinstance(token, str) else None
        if violation is not None:
            field, why = violation
            code = "INVALID_ARGUMENT"
            return _json_reply(
                400, rpc_error(400, message=why, error_code=code, field=field)
            ), token
        assert token is not None
        answer = self._take(self.rules.get(token)) or self._take(self.rules.get("*"))
        if answer is not None and answer.get("delay"):
            await asyncio.sleep(float(answer["delay"]))
        status = int(answer.get("status") or 200) if answer is not None else 200
        if answer is not None and status != 200:
            text = answer.get("message")
            if isinstance(text, str):
                text = text.replace("{token}", token).replace("{access_token}", access)
            error = rpc_error(
                status,
                answer.get("error_status"),
                text,
                error_code=answer.get("error_code"),
                field=answer.get("field"),
            )
            headers = {}
            if answer.get("retry_after") is not None:
                headers["retry-after"] = str(answer["retry_after"])
            return _json_reply(status, error, headers), token
        name = f"projects/{project}/messages/{uuid.uuid4().hex}"
        self.counters["delivered"] += 1
        self.records.append({"token": token, "message": message, "name": name})
        return _json_reply(200, {"name": name}), token

    # -- control -----------------------------------------------------------------------------
    def control(self, method: str, path: str, query: str, body: bytes) -> tuple[int, Any]:
        name = path.removeprefix("/_control/")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": "control body must be JSON"}
        if method == "GET" and name == "health":
            return 200, {"ok": True}
        if method == "GET" and name == "stats":
            return 200, self.stats()
        if method == "GET" and name in ("records", "attempts"):
            rows = self.records if name == "records" else self.attempts
            token = params.get("token")
            return 200, [r for r in rows if token is None or r["token"] == token]
        if method == "POST" and name == "script":
            times = data.get("times", 1)
            answer = {k: v for k, v in data.items() if k not in ("token", "times")}
            self.rules.setdefault(str(data["token"]), deque()).append(_Rule(answer, times))
            return 200, {"ok": True}
        if method == "POST" and name == "token_endpoint":
            answer = {"status": data.get("status", 500), "error": data.get("error")}
            self.token_rules.append(_Rule(answer, data.get("times", 1)))
            return 200, {"ok": True}
        if method == "POST" and name == "config":
            if "token_lifetime" in data:
                self.token_lifetime = int(data["token_lifetime"])
            return 200, {"ok": True}
        if method == "POST" and name == "revoke":
            self.issued.clear()
            return 200, {"ok": True}
        if method == "POST" and name == "reset":
            self.reset()
            if self.counting and "delay_ms" in params:
                self.delay = max(0.0, float(params["delay_ms"]) / 1000)
            return 200, {"ok": True}
        return 404, {"error": "unknown control call"}


def make_app(state: FakeFcmState) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app over ``state``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_REQUEST_BODY:
                break
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        method: str = scope["method"]
        match = _SEND_PATH.match(path)
        if len(body) > MAX_REQUEST_BODY:
            reply = _json_reply(413, rpc_error(400, message="Request payload size exceeds limit"))
        elif path.startswith("/_control/"):
            query = scope.get("query_string", b"").decode("latin-1")
            status, answer = state.control(method, path, query, bytes(body))
            reply = _json_reply(status, answer)
        elif path == "/token" and method == "POST":
            reply = state.grant(bytes(body))
        elif match is not None and method == "POST":
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            auth = headers.get("authorization", "")
            reply = await state.send(scope, match.group(1), auth, bytes(body))
        else:
            reply = _json_reply(404, rpc_error(404))
        status, headers, data = reply
        head = [(k.encode(), v.encode()) for k, v in headers.items()]
        head.append((b"content-length", str(len(data)).encode()))
        with contextlib.suppress(Exception):  # the client may have given up (deadline)
            await send({"type": "http.response.start", "status": status, "headers": head})
            await send({"type": "http.response.body", "body": data})

    return app


# -- the process -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--service-account", required=True, help="the account's JSON file")
    parser.add_argument("--token-lifetime", type=int, default=3600, help="seconds")
    parser.add_argument(
        "--max-requests", type=int, default=1 << 30, help="per connection, then GOAWAY"
    )
    parser.add_argument(
        "--counting", action="store_true", help="only check the bearer token and count sends"
    )
    args = parser.parse_args(argv)
    account = json.loads(Path(args.service_account).read_text())
    state = FakeFcmState(account, token_lifetime=args.token_lifetime, counting=args.counting)
    # hypercorn ends a connection after --max-requests requests with a GOAWAY, and then
    # abandons the streams still in flight (its h2 state is closed) and answers the next
    # frames with GOAWAY PROTOCOL_ERROR: not what FCM does, so only when a test asks for it.
    serve_tls(
        make_app(state),
        name="fake FCM",
        host=args.host,
        port=args.port,
        certfile=args.certfile,
        keyfile=args.keyfile,
        max_requests=args.max_requests,
        graceful_timeout=2,
    )
    return 0


# -- the test helper -------------------------------------------------------------------------
def write_service_account(
    path: Path,
    *,
    project_id: str,
    token_uri: str,
    client_email: str | None = None,
    private_key_id: str | None = None,
) -> dict[str, Any]:
    """A Google service-account JSON with a new RSA key at ``path``; returns its fields."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": private_key_id or secrets.token_hex(20),
        "private_key": pem,
        "client_email": client_email or f"beacon-push@{project_id}.iam.gserviceaccount.com",
        "client_id": str(secrets.randbelow(10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(account, indent=2))
    path.chmod(0o600)
    return account


class FakeFcm(FakeService):
    """A running fake FCM and its control client (thread-safe: httpx)."""

    label = "fake FCM"

    def __init__(
        self,
        process: ManagedProcess,
        *,
        port: int,
        service_account_file: Path,
        account: dict[str, Any],
        ca_file: Path,
    ) -> None:
        super().__init__(process, port=port, ca_file=str(ca_file))
        self.endpoint = f"https://127.0.0.1:{port}"  # FCM_ENDPOINT
        self.token_uri: str = account["token_uri"]
        self.service_account_file = str(service_account_file)
        self.project_id: str = account["project_id"]
        self.client_email: str = account["client_email"]
        self.private_key_id: str = account["private_key_id"]

    def env(self, ca_bundle: str | None = None) -> dict[str, str]:
        """What a Beacon process needs to push here: FCM_* and the CA to trust (``ca_bundle``:
        a bundle that also holds other CAs, e.g. the fake APNs's, else this fake's CA)."""
        bundle = ca_bundle or self.ca_file
        return {
            "FCM_SERVICE_ACCOUNT_FILE": self.service_account_file,
            "FCM_PROJECT_ID": self.project_id,
            "FCM_ENDPOINT": self.endpoint,
            "REQUESTS_CA_BUNDLE": bundle,
            "CURL_CA_BUNDLE": bundle,
            "SSL_CERT_FILE": bundle,
        }

    def script(
        self,
        token: str,
        status: int = 200,
        *,
        error_code: str | None = None,
        error_status: str | None = None,
        message: str | None = None,
        field: str | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
        times: int | None = 1,
    ) -> None:
        """Answer the next ``times`` sends to ``token`` (``"*"``: any token without its own
        rule; None: every one) with ``status`` and a google.rpc error: ``error_status``
        (default from the status), ``error_code`` (FcmError), ``field`` (a BadRequest field
        violation), ``message``; ``Retry-After``; after ``delay`` seconds. 200: accept."""
        body = {
            "token": token,
            "status": status,
            "error_code": error_code,
            "error_status": error_status,
            "message": message,
            "field": field,
            "retry_after": retry_after,
            "delay": delay,
            "times": times,
        }
        self._call("POST", "/_control/script", json=body)

    def script_token_endpoint(
        self, status: int = 500, error: str | None = None, *, times: int | None = 1
    ) -> None:
        """Answer the next ``times`` token requests with ``status`` and ``{"error": error}``."""
        body = {"status": status, "error": error, "times": times}
        self._call("POST", "/_control/token_endpoint", json=body)

    def set_token_lifetime(self, seconds: int) -> None:
        """``expires_in`` of access tokens granted from now on (until ``reset``)."""
        self._call("POST", "/_control/config", json={"token_lifetime": seconds})

    def revoke_access_tokens(self) -> None:
        """Every access token granted so far is refused (401) from now on."""
        self._call("POST", "/_control/revoke")

    def records(self, token: str | None = None) -> list[dict[str, Any]]:
        """Accepted messages, oldest first: ``token``, ``message`` (as sent), ``name``."""
        params = {"token": token} if token is not None else None
        return list(self._call("GET", "/_control/records", params=params))

    def attempts(self, token: str | None = None) -> list[dict[str, Any]]:
        """Every send: ``token`` (None if refused before its message was read), ``status``,
        ``answer``."""
        params = {"token": token} if token is not None else None
        return list(self._call("GET", "/_control/attempts", params=params))

    def stats(self) -> dict[str, Any]:
        """``token_grants``, ``token_refusals``, ``sends``, ``delivered``,
        ``unauthenticated`` (401s), ``access_tokens_seen`` (distinct), ``connections``,
        ``http_versions`` (``{"2": n}``), ``max_in_flight`` (concurrent sends)."""
        return dict(self._call("GET", "/_control/stats"))

    def reset(self, *, delay: float | None = None) -> None:
        """Forget scripts, records and counters; granted access tokens stay valid. ``delay``
        (counting mode only): seconds before each answer from now on."""
        params = {"delay_ms": f"{delay * 1000:g}"} if delay is not None else None
        self._call("POST", "/_control/reset", params=params)


@contextlib.contextmanager
def running_fake_fcm(
    folder: Path | None = None,
    *,
    project_id: str = "beacon-test",
    token_lifetime: int = 3600,
    max_requests: int | None = None,
    startup_timeout: float = 30.0,
    counting: bool = False,
) -> Iterator[FakeFcm]:
    """The fake FCM in a child process on a free port (its log and files in ``folder``);
    yields its client. ``token_lifetime``: seconds an access token lasts (``expires_in``);
    ``max_requests``: requests per connection before hypercorn ends it (see ``main``);
    ``counting``: the counting mode (see the module's docstring)."""
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fake-fcm-")))
        folder.mkdir(parents=True, exist_ok=True)
        certs = make_certs(folder)
        port = free_port()
        account_file = folder / "service-account.json"
        account = write_service_account(
            account_file, project_id=project_id, token_uri=f"https://127.0.0.1:{port}/token"
        )
        argv = [sys.executable, "-m", "tests.fakes.fcm", "--port", str(port)]
        argv += ["--certfile", str(certs["cert"]), "--keyfile", str(certs["key"])]
        argv += ["--service-account", str(account_file)]
        argv += ["--token-lifetime", str(token_lifetime)]
        if max_requests is not None:
            argv += ["--max-requests", str(max_requests)]
        if counting:
            argv.append("--counting")
        process = ManagedProcess("fake-fcm", argv, cwd=REPO_ROOT, log_dir=folder)
        fake = FakeFcm(
            process,
            port=port,
            service_account_file=account_file,
            account=account,
            ca_file=certs["ca"],
        )
        try:
            fake.wait_ready(startup_timeout)
            yield fake
        finally:
            fake.close()


if __name__ == "__main__":
    sys.exit(main())
