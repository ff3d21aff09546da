"""A fake Apple Push Notification service: the HTTP/2 provider API, as a real process.

Why: the APNs channel's HTTP/2 multiplexing, TLS, provider-token reuse and error handling can
only be trusted against something that speaks the protocol over a real socket. This is an ASGI
app served by hypercorn with TLS (ALPN h2). ``POST /3/device/<token>`` checks what APNs checks:
HTTP/2; the provider token (ES256 signature with the team's public key, ``kid``, ``iss`` = team,
``iat`` within the last hour: else 403 ``InvalidProviderToken``/``ExpiredProviderToken``); the
topic; a hex device token of 64+ digits (else 400 ``BadDeviceToken``); ``apns-push-type`` and a
body that agrees with it (``alert``: an alert, badge or sound; ``background``:
``content-available`` 1, no alert or sound, priority 5); priority, expiration, collapse id
(at most 64 bytes), a JSON body of at most 4096 bytes. Then it answers a scripted failure for
that device token, or 200 with an ``apns-id``, recording the request.

Control API (JSON, same port): ``GET /_control/health``; ``POST /_control/script``
``{"token", "status", "reason", "retry_after", "times", "delay"}`` (``times``: the next N
requests, null: every one; ``delay``: seconds before answering); ``GET
/_control/records[?token=]`` (accepted requests: headers, decoded body, HTTP version,
provider token); ``GET /_control/attempts`` (every device request and its answer); ``GET
/_control/stats`` (distinct provider tokens, connections, streams); ``POST
/_control/expire_tokens`` ``{"issued_before"}`` (older provider tokens get 403
``ExpiredProviderToken``); ``POST /_control/reset``.
A "connection" is a distinct client address that sent a push.

Counting mode (``--counting``, off by default; for benchmarks, where recording and checking
every request would make the fake the bottleneck): a push still needs HTTP/2, a provider token
that verifies and is not expired, and a hex device token; then it is only counted (no scripts,
no records or attempts, no other checks) and answered 200, after the delay set by ``POST
/_control/reset?delay_ms=N`` (0 by default). ``stats`` then also holds ``distinct`` (device
tokens), ``first`` and ``last`` (``time.monotonic()`` of the first and last accepted push: the
system's clock, comparable across processes on one machine) and ``counting``.

Tests use ``running_fake_apns()``: it makes the .p8 key, the certificates and the process, and
yields a ``FakeApns`` client with the settings Beacon needs (``env()``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fakes import FakeService, serve_tls
from tests.harness.certs import make_certs
from tests.harness.ports import free_port
from tests.harness.processes import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_PAYLOAD = 4096
MAX_REQUEST_BODY = 64 * 1024
TOKEN_MAX_AGE = 3600
TOKEN_MAX_SKEW = 60  # seconds an ``iat`` may be ahead of this clock
PUSH_TYPES = frozenset(
    {"alert", "background", "voip", "complication", "fileprovider", "mdm", "location"}
    | {"liveactivity", "pushtotalk", "widgets", "controls"}
)
_DEVICE_PATH = re.compile(r"/3/device/([^/]*)\Z")
_DEVICE_TOKEN = re.compile(r"[0-9A-Fa-f]{64,}\Z")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Reply = tuple[int, dict[str, str], bytes]


def _reply(status: int, reason: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    body = b""
    if reason is not None:
        data: dict[str, Any] = {"reason": reason}
        if status == 410:
            data["timestamp"] = int(time.time() * 1000)
        body = json.dumps(data).encode()
    return status, {"apns-id": str(uuid.uuid4()).upper(), **(headers or {})}, body


@dataclass
class _Script:
    status: int
    reason: str
    retry_after: str | None
    times: int | None  # None: every request
    delay: float = 0.0  # seconds before answering


@dataclass
class FakeApnsState:
    """What the fake knows and has seen; the ASGI layer (``app``) is thin."""

    public_key: ec.EllipticCurvePublicKey
    key_id: str
    team_id: str
    topics: frozenset[str]
    clock: Callable[[], float] = time.time
    scripts: dict[str, _Script] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    provider_tokens: set[str] = field(default_factory=set)
    connections: set[tuple[str, int]] = field(default_factory=set)
    streams: int = 0
    expired_before: float | None = None  # provider tokens issued earlier are expired
    counting: bool = False  # count accepted pushes only (see the module's docstring)
    count_delay: float = 0.0  # counting mode: seconds before each answer
    counted: int = 0
    tokens: set[str] = field(default_factory=set)  # counting mode: distinct device tokens
    first: float | None = None  # counting mode: time.monotonic() of the first accepted push
    last: float | None = None
    _delay: float = 0.0
    _verified: dict[str, dict[str, Any] | str] = field(default_factory=dict)

    def reset(self) -> None:
        self.scripts.clear()
        self.records.clear()
        self.attempts.clear()
        self.provider_tokens.clear()
        self.connections.clear()
        self.streams = 0
        self.expired_before = None
        self.counted = 0
        self.tokens.clear()
        self.first = self.last = None

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "provider_tokens": len(self.provider_tokens),
            "connections": len(self.connections),
            "streams": self.streams,
            "delivered": len(self.records),
        }
        if self.counting:
            stats["delivered"] = self.counted
            stats.update(counting=True, distinct=len(self.tokens), first=self.first, last=self.last)
        return stats

    def _claims(self, token: str) -> dict[str, Any] | str:
        """The token's verified claims, or the 403 reason (signatures checked once per token)."""
        cached = self._verified.get(token)
        if cached is not None:
            return cached
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
                raise jwt.InvalidTokenError("wrong alg or kid")
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=["ES256"],
                options={"require": ["iss", "iat"], "verify_iat": False},
            )
            if claims.get("iss") != self.team_id or not isinstance(claims.get("iat"), int):
                raise jwt.InvalidTokenError("wrong iss or iat")
        except jwt.InvalidTokenError:
            result: dict[str, Any] | str = "InvalidProviderToken"
        else:
            result = claims
        self._verified[token] = result
        return result

    def push(
        self, scope: Scope, token: str, headers: dict[str, str], body: bytes, too_big: bool
    ) -> tuple[Reply, float]:
        """Validate one device request like APNs, then answer as scripted or 200; and the
        seconds to wait before answering."""
        self.streams += 1
        client = scope.get("client")
        if client:
            self.connections.add((str(client[0]), int(client[1])))
        self._delay = 0.0
        if self.counting:
            return self._count(scope, token, headers), self._delay
        status, reply_headers, reply_body = self._push(scope, token, headers, body, too_big)
        self.attempts.append(
            {
                "token": token,
                "status": status,
                "reason": json.loads(reply_body)["reason"] if reply_body else None,
            }
        )
        return (status, reply_headers, reply_body), self._delay

    def _authorized(self, scope: Scope, headers: dict[str, str]) -> Reply | str:
        """The refusal of a request that is not POST over HTTP/2 with a valid provider token,
        else the provider token."""
        if scope.get("method") != "POST":
            return _reply(405, "MethodNotAllowed")
        if scope.get("http_version") != "2":
            return _reply(400, "BadRequest")  # APNs speaks HTTP/2 only
        authorization = headers.get("authorization", "")
        scheme, _, provider_token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not provider_token:
            return _reply(403, "MissingProviderToken")
        claims = self._claims(provider_token)
        if isinstance(claims, str):
            return _reply(403, claims)
        iat = claims["iat"]
        now = self.clock()
        expired_before = self.expired_before
        if now - iat > TOKEN_MAX_AGE or (expired_before is not None and iat < expired_before):
            return _reply(403, "ExpiredProviderToken")
        if iat - now > TOKEN_MAX_SKEW:
            return _reply(403, "InvalidProviderToken")
        self.provider_tokens.add(provider_token)
        return provider_token

    def _count(self, scope: Scope, token: str, headers: dict[str, str]) -> Reply:
        """Counting mode: HTTP/2 and the provider token as always, a hex device token; then
        counted and accepted."""
        provider_token = self._authorized(scope, headers)
        if not isinstance(provider_token, str):
            return provider_token
        if not _DEVICE_TOKEN.match(token):
            return _reply(400, "BadDeviceToken")
        now = time.monotonic()
        self.first = now if self.first is None else self.first
        self.last = now
        self.counted += 1
        self.tokens.add(token)
        self._delay = self.count_delay
        return _reply(200, None, {"apns-id": headers.get("apns-id") or str(uuid.uuid4())})

    def _push(
        self, scope: Scope, token: str, headers: dict[str, str], body: bytes, too_big: bool
    ) -> Reply:
        provider_token = self._authorized(scope, headers)
        if not isinstance(provider_token, str):
            return provider_token
        now = self.clock()
        topic = headers.get("apns-topic")
        if not topic:
            return _reply(400, "MissingTopic")
        if topic not in self.topics:
            return _reply(400, "TopicDisallowed")
        if not token:
            return _reply(400, "MissingDeviceToken")
        if not _DEVICE_TOKEN.match(token):
            return _reply(400, "BadDeviceToken")
        push_type = headers.get("apns-push-type")
        if push_type not in PUSH_TYPES:
            return _reply(400, "InvalidPushType")
        priority = headers.get("apns-priority", "10")
        if priority not in {"1", "5", "10"} or (push_type == "background" and priority == "10"):
            return _reply(400, "BadPriority")
        expiration = headers.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return _reply(400, "BadExpirationDate")
        collapse = headers.get("apns-collapse-id")
        if collapse is not None and len(collapse.encode()) > 64:
            return _reply(400, "BadCollapseId")
        if too_big or len(body) > MAX_PAYLOAD:
            return _reply(413, "PayloadTooLarge")
        if not body:
            return _reply(400, "PayloadEmpty")
        try:
            payload = json.loads(body)
        except ValueError:
            return _reply(400, "BadRequest")
        aps = payload.get("aps") if isinstance(payload, dict) else None
        if not isinstance(aps, dict):
            return _reply(400, "BadRequest")
        if push_type == "alert" and not ({"alert", "badge", "sound"} & aps.keys()):
            return _reply(400, "InvalidPushType")
        if push_type == "background" and (
            aps.get("content-available") != 1 or {"alert", "sound"} & aps.keys()
        ):
            return _reply(400, "InvalidPushType")
        script = self.scripts.get(token)
        if script is not None:
            if script.times is not None:
                script.times -= 1
                if script.times <= 0:
                    del self.scripts[token]
            self._delay = script.delay
            if script.status != 200:
                extra = {"retry-after": script.retry_after} if script.retry_after else {}
                return _reply(script.status, script.reason or None, extra)
        reply = _reply(200, None, {"apns-id": headers.get("apns-id") or str(uuid.uuid4())})
        visible = {k: v for k, v in headers.items() if k != "authorization"}
        self.records.append(
            {
                "token": token,
                "headers": visible,
                "body": payload,
                "http_version": scope.get("http_version"),
                "provider_token": provider_token,
                "apns_id": reply[1]["apns-id"],
                "received_at": now,
            }
        )
        return reply

    def control(self, method: str, path: str, query: str, body: bytes) -> tuple[int, Any]:
        """The ``/_control`` API: (status, JSON answer)."""
        args = {k: v[-1] for k, v in parse_qs(query).items()}
        if method == "GET" and path == "/_control/health":
            return 200, {"ok": True}
        if method == "GET" and path == "/_control/stats":
            return 200, self.stats()
        if method == "GET" and path == "/_control/records":
            token = args.get("token")
            return 200, [r for r in self.records if token is None or r["token"] == token]
        if method == "GET" and path == "/_control/attempts":
            token = args.get("token")
            return 200, [a for a in self.attempts if token is None or a["token"] == token]
        if method == "POST" and path == "/_control/reset":
            self.reset()
            if self.counting and "delay_ms" in args:
                self.count_delay = max(0.0, float(args["delay_ms"]) / 1000)
            return 200, {"ok": True}
        if method == "POST" and path == "/_control/expire_tokens":
            try:
                self.expired_before = float(json.loads(body)["issued_before"])
            except (ValueError, KeyError, TypeError):
                return 400, {"error": "want {issued_before: unix time}"}
            return 200, {"ok": True}
        if method == "POST" and path == "/_control/script":
            try:
                data = json.loads(body)
                status = int(data["status"])
                times = data.get("times", 1)
                if times is not None:
                    times = int(times)
                delay = float(data.get("delay") or 0.0)
                if not 200 <= status <= 599 or (times is not None and times < 1) or delay < 0:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                return 400, {"error": "want {token, status, reason, retry_after, times}"}
            retry_after = data.get("retry_after")
            self.scripts[str(data["token"])] = _Script(
                status,
                str(data.get("reason") or ""),
                None if retry_after is None else str(retry_after),
                times,
                delay,
            )
            return 200, {"ok": True}
        return 404, {"error": "unknown control call"}


def make_app(state: FakeApnsState) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app over ``state`` (one event loop: no locking needed)."""

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
        too_big = False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if not too_big:
                body += message.get("body", b"")
                too_big = len(body) > MAX_REQUEST_BODY
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        if path.startswith("/_control/"):
            query = scope.get("query_string", b"").decode("latin-1")
            status, answer = state.control(scope["method"], path, query, bytes(body))
            headers = {"content-type": "application/json"}
            data = json.dumps(answer).encode()
        else:
            match = _DEVICE_PATH.match(path)
            if match is None:
                status, headers, data = _reply(404, "BadPath")
            else:
                request_headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                }
                (status, headers, data), delay = state.push(
                    scope, match.group(1), request_headers, bytes(body), too_big
                )
                if delay:
                    await asyncio.sleep(delay)
        head = [(k.encode(), v.encode()) for k, v in headers.items()]
        head.append((b"content-length", str(len(data)).encode()))
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
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--team-id", required=True)
    parser.add_argument("--public-key", required=True, help="PEM file of the team's key")
    parser.add_argument("--topic", action="append", required=True, help="repeat for several")
    parser.add_argument(
        "--max-requests-per-connection",
        type=int,
        default=1_000_000,
        help="then GOAWAY and close, as APNs does now and then (hypercorn's default: 1000)",
    )
    parser.add_argument(
        "--counting", action="store_true", help="only check the provider token and count pushes"
    )
    args = parser.parse_args(argv)
    public_key = serialization.load_pem_public_key(Path(args.public_key).read_bytes())
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        parser.error("--public-key must be an EC public key")
    state = FakeApnsState(
        public_key, args.key_id, args.team_id, frozenset(args.topic), counting=args.counting
    )
    serve_tls(
        make_app(state),
        name="fake APNs",
        host=args.host,
        port=args.port,
        certfile=args.certfile,
        keyfile=args.keyfile,
        max_requests=args.max_requests_per_connection,
        graceful_timeout=1,
    )
    return 0


# -- the test helper -------------------------------------------------------------------------
class FakeApns(FakeService):
    """A running fake APNs and its control client (thread-safe: httpx)."""

    label = "fake APNs"

    def __init__(
        self,
        process: ManagedProcess,
        *,
        port: int,
        key_file: Path,
        key_id: str,
        team_id: str,
        topic: str,
        ca_file: Path,
    ) -> None:
        super().__init__(process, port=port, ca_file=str(ca_file))
        self.host = f"127.0.0.1:{port}"  # APNS_HOST
        self.key_file = str(key_file)
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic

    def env(self) -> dict[str, str]:
        """What a Beacon process needs to push here: APNS_* and the CA to trust."""
        return {
            "APNS_KEY_FILE": self.key_file,
            "APNS_KEY_ID": self.key_id,
            "APNS_TEAM_ID": self.team_id,
            "APNS_TOPIC": self.topic,
            "APNS_HOST": self.host,
            "REQUESTS_CA_BUNDLE": self.ca_file,
            "CURL_CA_BUNDLE": self.ca_file,
            "SSL_CERT_FILE": self.ca_file,
        }

    def script(
        self,
        token: str,
        status: int,
        reason: str = "",
        *,
        retry_after: float | str | None = None,
        times: int | None = 1,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests to ``token`` (None: every one) with ``status``
        and ``{"reason": reason}`` (and ``Retry-After``), ``delay`` seconds late; 200 means
        "answer normally" (a 200 with a delay: a slow APNs)."""
        body = {
            "token": token,
            "status": status,
            "reason": reason,
            "retry_after": retry_after,
            "times": times,
            "delay": delay,
        }
        self._call("POST", "/_control/script", json=body)

    def expire_provider_tokens(self, issued_before: float) -> None:
        """Answer 403 ``ExpiredProviderToken`` to provider tokens whose ``iat`` is earlier (as
        APNs does after an hour: for tests whose token clock is not the fake's)."""
        self._call("POST", "/_control/expire_tokens", json={"issued_before": issued_before})

    def records(self, token: str | None = None) -> list[dict[str, Any]]:
        """Accepted (200) requests, oldest first: token, headers (no authorization), decoded
        body, http_version, provider_token, apns_id, received_at."""
        params = {"token": token} if token is not None else None
        return list(self._call("GET", "/_control/records", params=params))

    def attempts(self, token: str | None = None) -> list[dict[str, Any]]:
        """Every device request: token, status, reason."""
        params = {"token": token} if token is not None else None
        return list(self._call("GET", "/_control/attempts", params=params))

    def stats(self) -> dict[str, int]:
        """``provider_tokens`` (distinct), ``connections``, ``streams``, ``delivered``."""
        return dict(self._call("GET", "/_control/stats"))

    def reset(self, *, delay: float | None = None) -> None:
        """Forget scripts, records and counters; ``delay`` (counting mode only): seconds
        before each answer from now on."""
        params = {"delay_ms": f"{delay * 1000:g}"} if delay is not None else None
        self._call("POST", "/_control/reset", params=params)


def _write_key(folder: Path) -> tuple[Path, Path]:
    """A new team key: the .p8 (PKCS#8 PEM) Beacon reads, and its public half for the fake."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / "AuthKey.p8"
    public = folder / "AuthKey.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@contextlib.contextmanager
def running_fake_apns(
    folder: Path | None = None,
    *,
    topic: str = "com.example.beacon",
    extra_topics: tuple[str, ...] = (),
    key_id: str = "ABC123DEFG",
    team_id: str = "DEF123GHIJ",
    max_requests_per_connection: int | None = None,
    startup_timeout: float = 30.0,
    counting: bool = False,
) -> Iterator[FakeApns]:
    """The fake APNs in a child process on a free port (its log in ``folder``); yields its
    client. ``topic`` is the default APNS_TOPIC; ``extra_topics`` are also accepted. With
    ``max_requests_per_connection`` it sends a GOAWAY after that many requests on one
    connection and closes it (hypercorn's ``keep_alive_max_requests``). ``counting``: the
    counting mode (see the module's docstring)."""
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fake-apns-")))
        folder.mkdir(parents=True, exist_ok=True)
        certs = make_certs(folder)
        key_file, public_file = _write_key(folder)
        port = free_port()
        argv = [sys.executable, "-m", "tests.fakes.apns", "--port", str(port)]
        argv += ["--certfile", str(certs["cert"]), "--keyfile", str(certs["key"])]
        argv += ["--key-id", key_id, "--team-id", team_id, "--public-key", str(public_file)]
        for name in (topic, *extra_topics):
            argv += ["--topic", name]
        if max_requests_per_connection is not None:
            argv += ["--max-requests-per-connection", str(max_requests_per_connection)]
        if counting:
            argv.append("--counting")
        process = ManagedProcess("fake-apns", argv, cwd=REPO_ROOT, log_dir=folder)
        fake = FakeApns(
            process,
            port=port,
            key_file=key_file,
            key_id=key_id,
            team_id=team_id,
            topic=topic,
            ca_file=certs["ca"],
        )
        try:
            fake.wait_ready(startup_timeout)
            yield fake
        finally:
            fake.close()


if __name__ == "__main__":
    sys.exit(main())
