"""End-to-end Web Push pipeline: one message to N offline members, web to push service.

Why: ``push_throughput.py`` measures the sender alone and ``push_fanout.py`` the planning alone;
neither says how fast a message posted by a user actually reaches every device. Here the real
processes run on loopback: the web process (the message is sent over Socket.IO by a connected
member, as a browser does), Redis, the ``unread`` worker and the ``push`` worker(s) (``celery -A
workers worker -Q push -P gevent -c 100`` by default), and a push service in its own process
over TLS (a throwaway CA made at start) that only counts pushes and answers 201, after a
configurable delay that stands for a real push service's distance. Members, topic and
subscriptions are inserted directly in the database; one subscription per run goes through the
REST API to prove the web tier accepts that endpoint form.

Per configuration (members x devices x latency): send -> first and last push arrival, pushes/s
end to end, CPU of the push worker process group per push, and the ratio to the sender-only
ceiling measured in the same run against the same push service (``PushSender.send_many`` in
this process, with the worker's per-batch concurrency). Also the sender against naive
``pywebpush.webpush()`` (``push_throughput.py``'s loop). Targets are printed with pass/fail.

Mobile channels (``--channels``, default ``webpush,fcm,apns``): the fake FCM and the fake APNs
of the tests (``tests/fakes``: hypercorn over TLS, HTTP/2, each in its own process with its own
CA; one CA bundle holding the three CAs is given to every process) are the far side of the FCM
and APNs channels. For each configuration each channel is run on its own: a message to N
members whose ``devices`` devices are all of that channel, reported like Web Push's (first and
last arrival, pushes/s, push worker CPU per push) with the ratio to Web Push's pushes/s of the
same configuration in the same run, and the fake's CPU per push (did the far side limit the
run?). The fakes run in their counting mode by default (``--fake-mode counting``: the bearer
or provider token is still verified on every request, then the push is only counted, with its
arrival time); ``--fake-mode full`` runs them as the tests do (every message checked and
recorded; arrival times from polling, 20 ms apart; latency 0 only).

The cost of notification decisions (``--decisions-cost``, issue 20): instead of the matrix
above, the same processes run two push workers, one recording decisions (the default
``DECISIONS_DAYS``) and one with ``DECISIONS_DAYS=0``, and only one of them consumes the
``push`` queue at a time (Celery's ``add_consumer`` / ``cancel_consumer``, from this process).
For each case (``--decisions-cases``: members and the share of them with one Web Push device;
decisions are recorded for every member, with a device or not) one topic is seeded, and the
same topic gets ``--decisions-repeats`` messages with decisions on and as many with them off,
interleaved (on, off, off, on, ...) so that a machine that drifts weighs on both alike.
Reported per message and as medians per case and mode: first and last arrival, pushes/s, the
planning time (from the push worker's log: the fan-out task received -> ``plan_fanout``'s
summary line, decisions recorded, nothing enqueued yet), the push worker's CPU per message
and per push, and Redis per message: commands (``INFO commandstats``, which counts a script's
own commands too: ``evalsha`` calls against ``lpush``/``ltrim`` calls), requests read (the
round trips, ``total_reads_processed``) and CPU; then the ratio on/off against the target (at
most 10% fewer pushes/s with decisions on).

    .venv/bin/python bench/push_pipeline.py --members 1000,5000 --devices 1,3 --latency 0,50
    .venv/bin/python bench/push_pipeline.py --members 200 --devices 1 --latency 0   # quick look
    .venv/bin/python bench/push_pipeline.py --members 1000 --devices 1 --latency 0 \
        --channels webpush,fcm,apns --skip-naive                             # mobile channels
    .venv/bin/python bench/push_pipeline.py --decisions-cost     # decisions on against off
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import shlex
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

HOST = "127.0.0.1"
SUBJECT = "mailto:bench@example.com"
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
CHANNELS = ("webpush", "fcm", "apns")
FAR_LABELS = {"webpush": "push service", "fcm": "fake FCM", "apns": "fake APNs"}

from tests.harness.certs import make_certs  # noqa: E402


# -- the counting push service (runs in its own process: ``--serve-push-service``) ------------
class _Counter:
    """What arrived since the last reset; the answer delay (seconds)."""

    def __init__(self) -> None:
        self.latency = 0.0
        self.connections = 0
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.refused = 0
        self.first: float | None = None
        self.last: float | None = None
        self.paths: set[str] = set()

    def stats(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "distinct": len(self.paths),
            "refused": self.refused,
            "first": self.first,
            "last": self.last,
            "latency": self.latency,
            "connections": self.connections,
            # the shape push_throughput.measure() reads (one pseudo-subscription)
            "subscriptions": {"all": {"delivered": self.count}},
        }


_CREATED = b"HTTP/1.1 201 Created\r\nLocation: /m/1\r\nContent-Length: 0\r\n\r\n"


def _reply(status: str, body: bytes = b"", ctype: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _connection(
    counter: _Counter, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """HTTP/1.1 keep-alive, one request after another (no pipelining: senders do not)."""
    counter.connections += 1
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = (lines[0].split(" ") + ["", ""])[:3]
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if length:
                await reader.readexactly(length)
            if method == "POST" and path.startswith("/push/"):
                now = time.monotonic()
                well_formed = (
                    headers.get("authorization", "").lower().startswith("vapid ")
                    and headers.get("content-encoding", "").lower() == "aes128gcm"
                    and headers.get("ttl", "").isdigit()
                    and length > 21 + 65 + 16
                )
                if not well_formed:
                    counter.refused += 1
                    answer = _reply("400 Bad Request")
                else:
                    counter.count += 1
                    counter.paths.add(path)
                    counter.first = now if counter.first is None else counter.first
                    counter.last = now
                    answer = _CREATED
                if counter.latency > 0:
                    await asyncio.sleep(counter.latency)  # this connection only
            elif path == "/_admin/stats":
                answer = _reply("200 OK", json.dumps(counter.stats()).encode())
            elif method == "POST" and path.startswith("/_admin/reset"):
                _, _, query = path.partition("?")
                params = dict(p.partition("=")[::2] for p in query.split("&") if p)
                counter.reset()
                counter.latency = float(params.get("latency_ms", counter.latency * 1000)) / 1000
                answer = _reply("200 OK", json.dumps(counter.stats()).encode())
            else:
                answer = _reply("404 Not Found")
            writer.write(answer)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(cert: str, key: str, latency_ms: float) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    counter = _Counter()
    counter.latency = latency_ms / 1000
    server = await asyncio.start_server(
        lambda r, w: _connection(counter, r, w), HOST, 0, ssl=context, backlog=1024
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


class CountingPushService:
    """The counting push service's child process and its admin calls (TLS, the bench's CA)."""

    label = FAR_LABELS["webpush"]

    def __init__(self, certs: dict[str, Path], startup_timeout: float = 20.0) -> None:
        self._conn: http.client.HTTPSConnection | None = None
        self._errors = tempfile.TemporaryFile()
        argv = [sys.executable, __file__, "--serve-push-service"]
        argv += ["--cert", str(certs["cert"]), "--key", str(certs["key"])]
        self.proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self._errors, text=True
        )
        self.pid = self.proc.pid
        port = _read_line(self.proc, startup_timeout)
        if not port.isdigit():
            self.close()
            self._errors.seek(0)
            raise RuntimeError(
                "push service did not start: " + self._errors.read().decode()[-2000:]
            )
        self.port = int(port)
        self.origin = f"https://{HOST}:{self.port}"
        self._context = ssl.create_default_context(cafile=str(certs["ca"]))

    def _call(self, method: str, path: str) -> dict[str, Any]:
        """One admin call on a kept-alive connection (polling must not cost a TLS handshake
        each time); reconnects once if the connection was dropped."""
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(
                    HOST, self.port, timeout=10, context=self._context
                )
            try:
                self._conn.request(method, path)
                response = self._conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"push service {method} {path}: {response.status}")
            return json.loads(body)
        raise AssertionError("unreachable")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_admin/stats")

    def reset(self, latency_ms: float) -> None:
        self._call("POST", f"/_admin/reset?latency_ms={latency_ms:g}")

    def endpoint(self) -> str:
        return f"{self.origin}/push/{uuid.uuid4().hex}{uuid.uuid4().hex}"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._errors.close()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
    return proc.stdout.readline().strip() if ready else ""


# -- the fake FCM and APNs (tests/fakes, their own processes) as the mobile channels' far side --
class FakeFarSide:
    """A running fake FCM or APNs behind the counting service's interface: ``reset(latency)``,
    ``stats()`` with count, distinct, refused, first and last (``time.monotonic()``), ``pid``.

    In counting mode the fake stamps the arrivals itself; in full mode (the tests' fake, every
    message checked and recorded) the arrivals are the times the polling saw the count grow,
    and the distinct device tokens come from its records once the run is over (``settle``)."""

    def __init__(self, channel: str, fake: Any, *, counting: bool) -> None:
        self.channel = channel
        self.label = FAR_LABELS[channel]
        self.fake = fake
        self.counting = counting
        self.pid: int = fake.process.pid
        self.origin = fake.endpoint if channel == "fcm" else f"https://{fake.host}"
        self._seen = 0
        self._first: float | None = None
        self._last: float | None = None

    def reset(self, latency_ms: float) -> None:
        if self.counting:
            self.fake.reset(delay=latency_ms / 1000)
        else:
            self.fake.reset()
        self._seen, self._first, self._last = 0, None, None

    def stats(self) -> dict[str, Any]:
        stats = self.fake.stats()
        count = int(stats["delivered"])
        sent = int(stats["sends"] if self.channel == "fcm" else stats["streams"])
        if self.counting:
            first, last, distinct = stats["first"], stats["last"], int(stats["distinct"])
        else:
            now = time.monotonic()
            if count > self._seen:
                self._first = now if self._first is None else self._first
                self._last = now
                self._seen = count
            first, last, distinct = self._first, self._last, count
        return {
            "count": count,
            "distinct": distinct,
            "refused": sent - count,
            "first": first,
            "last": last,
        }

    def settle(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Full mode: the distinct device tokens among the fake's records."""
        if not self.counting:
            stats["distinct"] = len({r["token"] for r in self.fake.records()})
        return stats


def mobile_token(channel: str) -> str:
    """A new device token as the platform makes them (FCM's shape; APNs: 32 bytes, hex)."""
    from tests.fakes.fcm import device_token

    return device_token() if channel == "fcm" else secrets.token_hex(32)


# -- fixtures ----------------------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def browser_keys(count: int) -> list[tuple[str, str]]:
    """``count`` distinct (p256dh, auth) pairs, as browsers make them (keys are real: the
    sender encrypts for each)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = []
    for _ in range(count):
        point = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        keys.append((_b64url(point), _b64url(os.urandom(16))))
    return keys


def seed(
    app: Any,
    service: CountingPushService,
    members: int,
    devices: int,
    channel: str = "webpush",
    subscribed: int | None = None,
) -> tuple[Any, Any]:
    """A topic of ``members`` offline members with ``devices`` subscriptions each (Web Push
    subscriptions, or ``channel``'s device tokens), plus the sender (no subscription);
    ``subscribed``: only the first that many members have devices. Returns (topic, sender)."""
    from sqlalchemy import insert

    from bench.stack import create_topics, create_users
    from webapp.extensions import db
    from webapp.models import PushSubscription, utcnow

    prefix = f"pipe{members}x{devices}" if channel == "webpush" else f"pipe-{channel}-{members}"
    subscribed = members if subscribed is None else subscribed
    users = create_users(app, members + 1, prefix=prefix)
    (topic,) = create_topics(app, [list(range(members + 1))], users)
    if channel == "webpush":
        keys = browser_keys(subscribed * devices)
        rows = [
            {
                "id": uuid.uuid4(),
                "user_id": uuid.UUID(u.id),
                "endpoint": service.endpoint(),
                "p256dh": keys[i * devices + d][0],
                "auth": keys[i * devices + d][1],
                "created_at": utcnow(),
                "failure_count": 0,
            }
            for i, u in enumerate(users[1 : 1 + subscribed])
            for d in range(devices)
        ]
    else:
        rows = [
            {
                "id": uuid.uuid4(),
                "user_id": uuid.UUID(u.id),
                "channel": channel,
                "token": mobile_token(channel),
                "created_at": utcnow(),
                "failure_count": 0,
            }
            for u in users[1 : 1 + subscribed]
            for _ in range(devices)
        ]
    with app.app_context():
        for start in range(0, len(rows), 5000):
            db.session.execute(insert(PushSubscription), rows[start : start + 5000])
        db.session.commit()
    return topic, users[0]


def check_endpoint_accepted(bench: Any, service: CountingPushService) -> None:
    """One subscription through the REST API: the web tier must accept the endpoint form."""
    import requests

    from bench.stack import create_users

    (user,) = create_users(bench.app, 1, prefix="pipe-api")
    p256dh, auth = browser_keys(1)[0]
    body = {
        "endpoint": service.endpoint(),
        "expirationTime": None,
        "keys": {"p256dh": p256dh, "auth": auth},
    }
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            f"{bench.url}/api/notifications/subscribe",
            json=body,
            headers={"Authorization": f"Bearer {user.token}"},
            timeout=30,
        )
    if response.status_code != 201:
        raise SystemExit(
            f"the web tier refused the endpoint: {response.status_code} {response.text}"
        )


def check_device_accepted(bench: Any, channel: str) -> None:
    """One FCM or APNs device through the REST API: the web tier must accept it."""
    import requests

    from bench.stack import create_users

    (user,) = create_users(bench.app, 1, prefix=f"pipe-api-{channel}")
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            f"{bench.url}/api/notifications/devices",
            json={"platform": channel, "token": mobile_token(channel)},
            headers={"Authorization": f"Bearer {user.token}"},
            timeout=30,
        )
    if response.status_code != 201:
        raise SystemExit(
            f"the web tier refused the {channel} device: {response.status_code} {response.text}"
        )


# -- measuring ---------------------------------------------------------------------------------
@dataclass
class Result:
    members: int
    devices: int
    latency_ms: float
    expected: int
    delivered: int
    duplicates: int
    refused: int
    ack: float  # send -> ack, seconds
    first: float | None  # send -> first arrival
    last: float | None  # send -> last arrival
    worker_cpu: float  # push worker group CPU seconds, whole message
    other_cpu: dict[str, float]
    channel: str = "webpush"

    @property
    def rate(self) -> float:
        return self.delivered / self.last if self.last else 0.0

    @property
    def far_cpu(self) -> float:
        """CPU seconds of the far side (the push service, or the fake FCM or APNs)."""
        return self.other_cpu[FAR_LABELS[self.channel]]


def _cpu(procs: list[Any]) -> float:
    from bench.stack import group_cpu_seconds

    return sum(group_cpu_seconds(p.pid) for p in procs)


def wait_quiet(procs: list[Any], *, still: float = 0.5, limit: float = 30.0) -> None:
    """Until the processes' CPU time stops growing (their work is done), at most ``limit``."""
    deadline = time.monotonic() + limit
    before = _cpu(procs)
    while time.monotonic() < deadline:
        time.sleep(still)
        now = _cpu(procs)
        if now - before < 0.02 * still:
            return
        before = now


def send_and_watch(
    bench: Any,
    service: CountingPushService | FakeFarSide,
    push_workers: list[Any],
    others: dict[str, list[Any]],
    topic: Any,
    sender: Any,
    expected: int,
    timeout: float,
    before_send: Callable[[], None] | None = None,
) -> tuple[float, dict[str, Any], float, dict[str, float]]:
    """Post one message as ``sender`` over Socket.IO; poll the push service (or the fake FCM or
    APNs) until ``expected`` pushes arrived (or ``timeout``); returns (ack, stats, worker CPU,
    other CPU). ``before_send`` runs once the processes are quiet, just before the send."""
    from bench.stack import cpu_seconds
    from tests.harness.sio_client import RecordingClient

    client = RecordingClient(name="sender")
    client.connect(bench.url, sender.token)
    try:
        wait_quiet(push_workers + [p for ps in others.values() for p in ps], limit=10)
        cpu_before = _cpu(push_workers)
        other_before = {name: _cpu(ps) for name, ps in others.items()}
        service_before = cpu_seconds(service.pid)
        if before_send is not None:
            before_send()
        text = "release is out, please check your devices " + uuid.uuid4().hex
        sent = time.monotonic()
        ack = client.call("send_message", {**topic_ref(topic), "message": text}, timeout=60)
        acked = time.monotonic() - sent
        if not ack.get("ok"):
            raise SystemExit(f"send_message was refused: {ack}")
        deadline = sent + timeout
        stats = service.stats()
        while stats["count"] < expected and time.monotonic() < deadline:
            time.sleep(0.02)
            stats = service.stats()
    finally:
        client.disconnect()
    if isinstance(service, FakeFarSide):
        stats = service.settle(stats)
    wait_quiet(push_workers)  # the worker books its answers after the last push
    worker_cpu = _cpu(push_workers) - cpu_before
    other = {name: _cpu(ps) - other_before[name] for name, ps in others.items()}
    other[service.label] = cpu_seconds(service.pid) - service_before
    for key in ("first", "last"):
        if stats[key] is not None:
            stats[key] -= sent
    return acked, stats, worker_cpu, other


def topic_ref(topic: Any) -> dict[str, str]:
    return {"room_id": topic.room_id, "topic_id": topic.topic_id}


def sender_ceiling(
    service: CountingPushService,
    private_key: str,
    *,
    concurrency: int,
    batch: int,
    n: int,
    timeout: float,
) -> Any:
    """A ``PushSender.send_many`` loop in this process, one batch after another, as one send
    task does: ``PUSH_BATCH_SIZE`` pushes per call, ``PUSH_SEND_CONCURRENCY`` in flight."""
    from bench.push_throughput import TTL, measure, payload
    from webapp.delivery.channels.webpush.sender import PushSender
    from webapp.delivery.channels.webpush.subscription import SubscriptionKeys

    keys = browser_keys(min(n, 500))
    subs = [SubscriptionKeys(service.endpoint(), *keys[i]) for i in range(len(keys))]
    messages = [(subs[i % len(subs)], payload(i)) for i in range(n)]
    allowed = (f"{HOST}:{service.port}",)
    with PushSender(
        private_key, SUBJECT, timeout=timeout, concurrency=concurrency, allowed_hosts=allowed
    ) as sender:
        sender.send_many(messages[: min(n, 200)], ttl=TTL)  # connections, key and JWT caches
        chunks = [messages[i : i + batch] for i in range(0, n, batch)]
        return measure(
            "send_many", service, n, 1, lambda: [sender.send_many(c, ttl=TTL) for c in chunks]
        )


def naive_rate(service: CountingPushService, private_key: str, n: int) -> Any:
    from bench.push_throughput import measure, naive_loop, payload

    keys = browser_keys(min(n, 50))
    subs = [{"endpoint": service.endpoint(), "keys": {"p256dh": p, "auth": a}} for p, a in keys]
    payloads = [payload(i) for i in range(n)]
    return measure("naive", service, n, 1, lambda: naive_loop(private_key, subs, payloads))


# -- the run -----------------------------------------------------------------------------------
@contextlib.contextmanager
def pipeline(
    args: argparse.Namespace,
    ca_bundle: Path,
    service: CountingPushService,
    vapid: tuple[str, str],
    mobile_env: dict[str, str] | None = None,
    push_variants: dict[str, dict[str, str]] | None = None,
) -> Iterator[tuple[Any, list[Any], dict[str, list[Any]]]]:
    """The stack (web, Redis, database), the unread worker and the push worker(s);
    ``mobile_env``: the FCM_* and APNS_* settings of the fakes; ``push_variants``: instead of
    ``--push-workers``, one push worker ``push-<name>`` per variant, with its settings on top."""
    from bench.stack import beacon_stack
    from tests.conftest import start_worker

    env = {
        "VAPID_PRIVATE_KEY": vapid[0],
        "VAPID_PUBLIC_KEY": vapid[1],
        "VAPID_SUBJECT": SUBJECT,
        "PUSH_ALLOWED_HOSTS": f"{HOST}:{service.port}",
        "PUSH_COALESCE_WINDOW": str(args.coalesce_window),
        **(mobile_env or {}),
        **{name: str(ca_bundle) for name in CA_VARIABLES},
    }
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    with beacon_stack(args.backend, worker=False, extra_env=env, keep_logs=args.keep_logs) as bench:
        assert bench.log_dir is not None
        with contextlib.ExitStack() as procs:
            unread = start_worker(
                "unread", bench.env, bench.log_dir, "unread", *shlex.split(args.unread_args)
            )
            procs.callback(unread.stop)
            push = []
            variants = push_variants or {f"{i}": {} for i in range(args.push_workers)}
            for name, extra in variants.items():
                w = start_worker(
                    f"push-{name}" if push_variants else f"push{name}",
                    {**bench.env, **extra},
                    bench.log_dir,
                    "push",
                    *shlex.split(args.worker_args),
                )
                procs.callback(w.stop)
                push.append(w)
            others = {"web": [bench.web], "unread": [unread]}
            yield bench, push, others
        if args.keep_logs:
            print(f"logs: {bench.log_dir}")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run(args: argparse.Namespace) -> int:
    from bench.stack import raise_fd_limit
    from config import load_settings
    from webapp.delivery.channels.webpush.vapid import generate_vapid_keypair

    raise_fd_limit()
    if args.decisions_cost:
        return run_decisions(args)
    members = [int(m) for m in args.members.split(",")]
    devices = [int(d) for d in args.devices.split(",")]
    latencies = [float(x) for x in args.latency.split(",")]
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown or not channels:
        raise SystemExit(f"--channels: one or more of {', '.join(CHANNELS)} (not {unknown})")
    counting = args.fake_mode == "counting"
    if not counting and any(latencies) and set(channels) - {"webpush"}:
        raise SystemExit("--fake-mode full measures the mobile channels at --latency 0 only")
    vapid = generate_vapid_keypair()
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="beacon-pipe-")))
        certs = make_certs(folder)
        fakes, mobile_env, ca_bundle = start_fakes(stack, folder, channels, counting, certs)
        for name in CA_VARIABLES:  # this process's sender and pywebpush (requests) trust it too
            os.environ[name] = str(ca_bundle)
        service = CountingPushService(certs)
        stack.callback(service.close)
        bench, push_workers, others = stack.enter_context(
            pipeline(args, ca_bundle, service, vapid, mobile_env)
        )
        settings = load_settings({**os.environ, **bench.env})
        concurrency, batch = settings.push_send_concurrency, settings.push_batch_size
        timeout = settings.push_request_timeout
        print(
            f"push pipeline: web + unread ({args.unread_args}) + {args.push_workers} push "
            f"worker(s) ({args.worker_args}), {args.backend}; PUSH_BATCH_SIZE={batch}, "
            f"PUSH_SEND_CONCURRENCY={concurrency}, PUSH_COALESCE_WINDOW={args.coalesce_window:g}; "
            f"push service {service.origin} (TLS, counts and answers 201, own process); "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        for far in fakes.values():
            mode = "counting mode" if counting else "full mode: checks and records every push"
            print(f"{far.label} {far.origin} (TLS, HTTP/2, {mode}, own process)", flush=True)
        check_endpoint_accepted(bench, service)
        for channel in fakes:
            check_device_accepted(bench, channel)
        # Warm up: worker imports, database, TLS connections and JWT cache of the push worker.
        service.reset(0)
        topic, sender = seed(bench.app, service, args.warmup, 1)
        send_and_watch(bench, service, push_workers, others, topic, sender, args.warmup, 60)
        for far in fakes.values():  # and the HTTP/2 connection, access or provider token
            far.reset(0)
            topic, sender = seed(bench.app, service, args.warmup, 1, far.channel)
            _, stats, _, _ = send_and_watch(
                bench, far, push_workers, others, topic, sender, args.warmup, 60
            )
            if stats["count"] < args.warmup:
                raise SystemExit(f"warm-up: {far.label} got {stats['count']}/{args.warmup}")

        results: list[Result] = []
        ceilings: dict[float, Any] = {}
        naive = None
        for latency in latencies:
            service.reset(latency)
            n = args.ceiling_n
            if "webpush" in channels:
                ceilings[latency] = sender_ceiling(
                    service, vapid[0], concurrency=concurrency, batch=batch, n=n, timeout=timeout
                )
                if latency == 0 and not args.skip_naive:
                    naive = naive_rate(service, vapid[0], args.naive_n)
            for m in members:
                for d in devices:
                    for channel in channels:
                        far = service if channel == "webpush" else fakes[channel]
                        topic, sender = seed(bench.app, service, m, d, channel)
                        far.reset(latency)
                        ack, stats, cpu, other = send_and_watch(
                            bench, far, push_workers, others, topic, sender, m * d, args.timeout
                        )
                        result = Result(
                            m,
                            d,
                            latency,
                            m * d,
                            stats["count"],
                            stats["count"] - stats["distinct"],
                            stats["refused"],
                            ack,
                            stats["first"],
                            stats["last"],
                            cpu,
                            other,
                            channel,
                        )
                        results.append(result)
                        if channel == "webpush":
                            report_row(result, ceilings[latency])
                        else:
                            report_mobile_row(result, baseline(results, result))
        report(results, ceilings, naive, os.getloadavg())
        if fakes:
            report_mobile(results, counting)
    return 0


def start_fakes(
    stack: contextlib.ExitStack,
    folder: Path,
    channels: list[str],
    counting: bool,
    certs: dict[str, Path],
) -> tuple[dict[str, FakeFarSide], dict[str, str], Path]:
    """The fake FCM and APNs the channels want, in their own processes (stopped by ``stack``);
    returns them, the FCM_* and APNS_* settings, and the CA bundle every process trusts (the
    bench's CA and the fakes')."""
    from tests.fakes.apns import running_fake_apns
    from tests.fakes.fcm import running_fake_fcm

    fakes: dict[str, FakeFarSide] = {}
    env: dict[str, str] = {}
    if "fcm" in channels:
        fcm = stack.enter_context(running_fake_fcm(folder / "fcm", counting=counting))
        fakes["fcm"] = FakeFarSide("fcm", fcm, counting=counting)
        env.update(fcm.env())
    if "apns" in channels:
        apns = stack.enter_context(running_fake_apns(folder / "apns", counting=counting))
        fakes["apns"] = FakeFarSide("apns", apns, counting=counting)
        env.update(apns.env())
    if not fakes:
        return fakes, env, certs["ca"]
    bundle = folder / "ca-bundle.pem"
    cas = [certs["ca"], *(Path(far.fake.ca_file) for far in fakes.values())]
    bundle.write_text("".join(path.read_text() for path in cas))
    return fakes, env, bundle


def baseline(results: list[Result], r: Result) -> Result | None:
    """Web Push's result of ``r``'s configuration in this run, if it was measured."""
    for other in results:
        if other.channel == "webpush" and (other.members, other.devices, other.latency_ms) == (
            r.members,
            r.devices,
            r.latency_ms,
        ):
            return other
    return None


def report_row(r: Result, ceiling: Any) -> None:
    per_push = r.worker_cpu / r.delivered * 1e6 if r.delivered else float("nan")
    others = ", ".join(f"{k} {v:.2f}s" for k, v in r.other_cpu.items())
    print(
        f"{r.members:>6} x {r.devices} @ {r.latency_ms:>3g} ms: {r.delivered}/{r.expected} "
        f"delivered (dup {r.duplicates}, refused {r.refused}); ack {_ms(r.ack)} ms, "
        f"first {_ms(r.first)} ms, last {_ms(r.last)} ms, {r.rate:,.0f} pushes/s "
        f"({r.rate * ceiling.wall:.0%} of sender-only), push worker CPU {per_push:,.0f} µs/push "
        f"({others} CPU)",
        flush=True,
    )


def _ratio(r: Result, base: Result | None) -> str:
    return f"{r.rate / base.rate:.2f}x" if base is not None and base.rate else "-"


def report_mobile_row(r: Result, base: Result | None) -> None:
    n = max(1, r.delivered)
    others = ", ".join(f"{k} {v:.2f}s" for k, v in r.other_cpu.items())
    print(
        f"{r.channel:>7} {r.members:>6} x {r.devices} @ {r.latency_ms:>3g} ms: "
        f"{r.delivered}/{r.expected} delivered (dup {r.duplicates}, refused {r.refused}); "
        f"ack {_ms(r.ack)} ms, first {_ms(r.first)} ms, last {_ms(r.last)} ms, "
        f"{r.rate:,.0f} pushes/s ({_ratio(r, base)} Web Push), push worker CPU "
        f"{r.worker_cpu / n * 1e6:,.0f} µs/push, {r.far_cpu / n * 1e6:,.0f} µs/push "
        f"({others} CPU)",
        flush=True,
    )


def report_mobile(results: list[Result], counting: bool) -> None:
    mode = "counting mode" if counting else "full mode"
    print(f"\nmobile channels, each on its own (fakes in {mode}):")
    print(
        f"{'channel':>7} {'members':>7} {'dev':>3} {'lat ms':>6} {'pushes':>7} {'first ms':>9} "
        f"{'last ms':>9} {'pushes/s':>9} {'webpush/s':>9} {'ratio':>6} {'worker µs/push':>15} "
        f"{'fake µs/push':>13}"
    )
    mobile = [r for r in results if r.channel != "webpush"]
    for r in mobile:
        base = baseline(results, r)
        n = max(1, r.delivered)
        web = f"{base.rate:,.0f}" if base is not None else "-"
        print(
            f"{r.channel:>7} {r.members:>7} {r.devices:>3} {r.latency_ms:>6g} {r.delivered:>7} "
            f"{_ms(r.first):>9} {_ms(r.last):>9} {r.rate:>9,.0f} {web:>9} "
            f"{_ratio(r, base):>6} {r.worker_cpu / n * 1e6:>15,.0f} {r.far_cpu / n * 1e6:>13,.0f}"
        )
    print(
        "(ratio: pushes/s against Web Push's of the same configuration in this run;\n"
        " fake µs/push: CPU of the fake's process per push, its control calls included)"
    )
    complete = all(r.delivered == r.expected and r.duplicates == 0 for r in mobile)
    print(f"  every mobile push delivered exactly once: {_verdict(complete)}")


def report(results: list[Result], ceilings: dict[float, Any], naive: Any, load: Any) -> None:
    results = [r for r in results if r.channel == "webpush"]
    if not results and not ceilings:
        print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        return
    print()
    print(
        f"{'members':>7} {'dev':>3} {'lat ms':>6} {'pushes':>7} {'first ms':>9} {'last ms':>9} "
        f"{'pushes/s':>9} {'ceiling/s':>9} {'ratio':>6} {'worker µs/push':>15} "
        f"{'service µs/push':>16}"
    )
    for r in results:
        ceiling = 1 / ceilings[r.latency_ms].wall
        n = max(1, r.delivered)
        print(
            f"{r.members:>7} {r.devices:>3} {r.latency_ms:>6g} {r.delivered:>7} {_ms(r.first):>9} "
            f"{_ms(r.last):>9} {r.rate:>9,.0f} {ceiling:>9,.0f} {r.rate / ceiling:>6.0%} "
            f"{r.worker_cpu / n * 1e6:>15,.0f} {r.far_cpu / n * 1e6:>16,.0f}"
        )
    print("(worker / service µs/push: CPU of the push worker process group / push service)")
    print(
        "(ceiling: one send task's loop, batch after batch; the worker runs up to its pool size"
        " of such tasks at once, so with latency the pipeline can exceed it)"
    )
    for latency, c in ceilings.items():
        service = "" if c.service_cpu is None else f", push service {c.service_cpu * 1e6:.0f}"
        print(
            f"sender-only ceiling @ {latency:g} ms: {1 / c.wall:,.0f} pushes/s "
            f"(CPU µs/push: sender {c.cpu * 1e6:.0f}{service})"
        )
    c0 = ceilings.get(0.0)
    if naive is not None:
        print(
            f"naive pywebpush.webpush() @ 0 ms: {1 / naive.wall:,.0f} pushes/s "
            f"(CPU µs/push: {naive.cpu * 1e6:.0f})"
        )
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("\ntargets:")
    complete = all(r.delivered == r.expected and r.duplicates == 0 for r in results)
    print(f"  every push delivered exactly once: {_verdict(complete)}")
    for r in results:
        if r.latency_ms == 0:
            print(
                f"  >= 1,000 pushes/s end to end at 0 ms ({r.members}x{r.devices}): "
                f"{r.rate:,.0f}/s {_verdict(r.rate >= 1000)}"
            )
        if r.latency_ms == 50:
            print(
                f"  >= 800 pushes/s end to end at 50 ms over TLS ({r.members}x{r.devices}): "
                f"{r.rate:,.0f}/s {_verdict(r.rate >= 800)}"
            )
        if r.members == 5000 and r.devices == 1:
            done = r.last is not None and r.delivered == r.expected
            print(
                f"  5,000 members x 1 device in <= 6 s (@ {r.latency_ms:g} ms): "
                f"{_ms(r.last)} ms {_verdict(done and r.last <= 6)}"
            )
    for r in results:
        ratio = r.rate * ceilings[r.latency_ms].wall
        print(
            f"  pipeline >= 50% of sender-only ({r.members}x{r.devices} @ {r.latency_ms:g} ms): "
            f"{ratio:.0%} {_verdict(ratio >= 0.5)}"
        )
    if naive is not None and c0 is not None:
        ratio = naive.wall / c0.wall
        print(f"  sender >= 5x naive pywebpush (@ 0 ms, wall): {ratio:.1f}x {_verdict(ratio >= 5)}")


# -- the cost of notification decisions (``--decisions-cost``, issue 20) --------------------
DECISION_MODES = {"on": {}, "off": {"DECISIONS_DAYS": "0"}}  # push worker variants
# A push worker's log lines: a task received or done, and the fan-out's summary (the last
# thing ``plan_fanout`` does), each with its time stamp.
_TASK_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/MainProcess\] "
    r"(?:Task (beacon\.push\.\w+)\[[^\]]+\] (received|succeeded in ([0-9.e+-]+)s)"
    r"|(push fan-out) message=)",
    re.MULTILINE,
)


def fanout_times(log: str) -> tuple[float | None, float | None]:
    """From a push worker's log over one message: (plan, task) in seconds. Plan: the fan-out
    task received -> its summary line, logged when ``plan_fanout`` returns (every member
    planned and their decisions recorded; nothing enqueued yet); task: the fan-out task's run
    time (longer: it enqueues the batches while the same process already sends them)."""
    from datetime import datetime

    start = planned = task = None
    for stamp, name, what, seconds, summary in _TASK_LINE.findall(log):
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
        if name == "beacon.push.fan_out" and what == "received":
            start = start or when
        elif summary and start is not None:
            planned = planned or when
        elif name == "beacon.push.fan_out" and seconds:
            task = float(seconds)
    plan = (planned - start).total_seconds() if start and planned else None
    return plan, task


@dataclass(frozen=True)
class DecisionCase:
    members: int
    subscribed: int  # members with one device; the others have none

    @property
    def label(self) -> str:
        return f"{self.members:,} members, {self.subscribed:,} with a device"


def decision_cases(spec: str) -> list[DecisionCase]:
    """``5000:0.9,5000:0.1`` -> members and how many of them have a device."""
    cases = []
    for item in spec.split(","):
        members, _, share = item.strip().partition(":")
        n = int(members)
        cases.append(DecisionCase(n, max(1, min(n, round(n * float(share or 1))))))
    return cases


def interleaved(repeats: int) -> list[str]:
    """on, off, off, on, on, off, ...: each mode first as often as the other."""
    pairs = [("on", "off") if i % 2 == 0 else ("off", "on") for i in range(repeats)]
    return [mode for pair in pairs for mode in pair]


class PushConsumers:
    """Which push worker consumes the ``push`` queue: Celery's remote control from this
    process (``cancel_consumer`` on the others first, then ``add_consumer``), checked with
    ``active_queues``."""

    def __init__(self, broker_url: str, workers: dict[str, Any]) -> None:
        from celery import Celery

        self.app = Celery("bench-control", broker=broker_url)
        self.active: str | None = None
        replies = self.app.control.ping(timeout=3.0)
        hosts = [host for reply in replies for host in reply]
        self.hosts: dict[str, str] = {}
        for mode, worker in workers.items():
            found = [h for h in hosts if h.startswith(f"{worker.name}-")]
            if len(found) != 1:
                raise SystemExit(f"push worker {worker.name}: not found among {hosts}")
            self.hosts[mode] = found[0]

    def queues(self) -> dict[str, list[str]]:
        inspect = self.app.control.inspect(destination=list(self.hosts.values()), timeout=3.0)
        found = inspect.active_queues() or {}
        return {
            mode: sorted(q["name"] for q in found.get(host, []))
            for mode, host in self.hosts.items()
        }

    def switch(self, mode: str, timeout: float = 30.0) -> None:
        """Only ``mode``'s worker consumes ``push`` (asked again every few seconds until the
        workers say so: a control message can be answered before it takes effect)."""
        if mode == self.active:
            return
        control = self.app.control
        deadline = time.monotonic() + timeout
        queues: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            for other, host in self.hosts.items():
                if other != mode:
                    control.cancel_consumer("push", destination=[host], reply=True, timeout=3.0)
            control.add_consumer("push", destination=[self.hosts[mode]], reply=True, timeout=3.0)
            for _ in range(6):
                time.sleep(0.5)
                queues = self.queues()
                if all(("push" in q) == (m == mode) for m, q in queues.items()):
                    time.sleep(1.0)  # a cancelled worker's blocking pop ends within a second
                    self.active = mode
                    return
        raise SystemExit(f"push queue consumers: {queues}, wanted only {mode!r}")


def redis_figures(client: Any) -> dict[str, Any]:
    """Redis's per-command calls and µs (``INFO commandstats``: a script's own commands are
    counted too), its read events (``total_reads_processed``: at least one per round trip;
    a request bigger than Redis's 16 KB read buffer takes several) and its CPU seconds."""
    info = client.info("all")
    return {
        "commands": {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in info.items()
            if name.startswith("cmdstat_")
        },
        "reads": int(info["total_reads_processed"]),
        "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
    }


def redis_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    commands = {}
    for name, (calls, usec) in after["commands"].items():
        calls0, usec0 = before["commands"].get(name, (0, 0))
        if calls > calls0 and name != "info":  # the bench's own INFO calls
            commands[name] = (calls - calls0, usec - usec0)
    return {
        "commands": commands,
        "reads": after["reads"] - before["reads"] - 1,  # less the bench's INFO
        "cpu": after["cpu"] - before["cpu"],
    }


@dataclass
class DecisionRun:
    case: DecisionCase
    mode: str
    result: Result
    plan: float | None  # fan-out task received -> plan_fanout done (the worker's log)
    fanout: float | None  # seconds the fan_out task ran (its worker's log)
    redis: dict[str, Any]  # redis_delta over the message
    recorded: int  # entries the watched members' decision lists gained (on: one each)
    watched: int  # members watched
    stray: list[str]  # push tasks the worker that was not consuming took (should be none)

    def calls(self, command: str) -> int:
        return self.redis["commands"].get(command, (0, 0))[0]

    @property
    def total_calls(self) -> int:
        return sum(calls for calls, _ in self.redis["commands"].values())

    @property
    def script_ms(self) -> float:
        return self.redis["commands"].get("evalsha", (0, 0))[1] / 1000


def measure_decisions(
    bench: Any,
    service: CountingPushService,
    workers: dict[str, Any],
    others: dict[str, list[Any]],
    case: DecisionCase,
    topic: Any,
    sender: Any,
    watched_ids: list[str],
    mode: str,
    args: argparse.Namespace,
) -> DecisionRun:
    """One message with ``mode``'s push worker consuming; the other is watched as a bystander."""
    from webapp.delivery.decisions import PREFIX

    active = workers[mode]
    idle = [w for m, w in workers.items() if m != mode]
    client = bench.redis_client()
    watched = [f"{PREFIX}:messages:{user_id}" for user_id in watched_ids]  # its lists
    marks = {m: w.log_size() for m, w in workers.items()}
    figures: dict[str, Any] = {}
    lengths: list[int] = []

    def before_send() -> None:
        lengths.extend(client.llen(key) for key in watched)
        figures["before"] = redis_figures(client)

    service.reset(args.decisions_latency)
    ack, stats, cpu, other = send_and_watch(
        bench,
        service,
        [active],
        {**others, "idle push worker": idle},
        topic,
        sender,
        case.subscribed,
        args.timeout,
        before_send,
    )
    delta = redis_delta(figures["before"], redis_figures(client))
    recorded = sum(client.llen(key) for key in watched) - sum(lengths)
    logs = {m: w.log_text(marks[m]) for m, w in workers.items()}
    plan, fanout = fanout_times(logs[mode])
    stray = [
        line[1] or line[4]
        for m, text in logs.items()
        if m != mode
        for line in _TASK_LINE.findall(text)
        if line[2] == "received" or line[4]
    ]
    result = Result(
        case.members,
        1,
        args.decisions_latency,
        case.subscribed,
        stats["count"],
        stats["count"] - stats["distinct"],
        stats["refused"],
        ack,
        stats["first"],
        stats["last"],
        cpu,
        other,
    )
    return DecisionRun(case, mode, result, plan, fanout, delta, recorded, len(watched), stray)


def report_decision_row(run: DecisionRun) -> None:
    r = run.result
    n = max(1, r.delivered)
    print(
        f"{run.case.members:>6} ({run.case.subscribed:>5} with a device) decisions {run.mode:<3}: "
        f"{r.delivered}/{r.expected} delivered (dup {r.duplicates}); first {_ms(r.first)} ms, "
        f"last {_ms(r.last)} ms, {r.rate:,.0f} pushes/s, plan {_ms(run.plan)} ms (fan-out task "
        f"{_ms(run.fanout)} ms), "
        f"push worker {r.worker_cpu * 1000:,.0f} ms CPU ({r.worker_cpu / n * 1e6:,.0f} µs/push), "
        f"idle worker {r.other_cpu['idle push worker'] * 1000:,.0f} ms; Redis: "
        f"{run.calls('evalsha')} evalsha, {run.calls('lpush')} lpush, {run.calls('ltrim')} "
        f"ltrim, {run.total_calls:,} commands in {run.redis['reads']:,} reads, "
        f"{run.redis['cpu'] * 1000:,.0f} ms CPU",
        flush=True,
    )


def _median(values: list[Any]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


DECISION_FIGURES: dict[str, Callable[[DecisionRun], Any]] = {
    "first": lambda x: x.result.first,
    "last": lambda x: x.result.last,
    "plan": lambda x: x.plan,
    "rate": lambda x: x.result.rate,
    "cpu": lambda x: x.result.worker_cpu,
    "evalsha": lambda x: x.calls("evalsha"),
    "lpush": lambda x: x.calls("lpush"),
    "ltrim": lambda x: x.calls("ltrim"),
    "calls": lambda x: x.total_calls,
    "reads": lambda x: x.redis["reads"],
    "script": lambda x: x.script_ms,
    "redis": lambda x: x.redis["cpu"],
}


def report_decisions(runs: list[DecisionRun], load: Any) -> None:
    print(
        "\ncost of notification decisions: medians per case and mode (same topic, same "
        "processes, messages interleaved on/off)"
    )
    print(
        f"{'members':>7} {'w/ dev':>6} {'mode':>4} {'msgs':>4} {'first ms':>8} {'last ms':>8} "
        f"{'plan ms':>7} {'pushes/s':>8} {'worker ms':>9} {'µs/push':>7} {'evalsha':>7} "
        f"{'lpush':>6} {'ltrim':>6} {'cmds':>6} {'reads':>6} {'script ms':>9} {'redis ms':>8}"
    )
    cases = list(dict.fromkeys(run.case for run in runs))
    medians: dict[tuple[DecisionCase, str], dict[str, float]] = {}
    for case in cases:
        for mode in DECISION_MODES:
            mine = [run for run in runs if run.case == case and run.mode == mode]
            if not mine:
                continue
            m = {name: _median([get(x) for x in mine]) for name, get in DECISION_FIGURES.items()}
            medians[case, mode] = m
            print(
                f"{case.members:>7} {case.subscribed:>6} {mode:>4} {len(mine):>4} "
                f"{_ms(m['first']):>8} {_ms(m['last']):>8} {_ms(m['plan']):>7} "
                f"{m['rate']:>8,.0f} {m['cpu'] * 1000:>9,.0f} "
                f"{m['cpu'] / case.subscribed * 1e6:>7,.0f} {m['evalsha']:>7,.0f} "
                f"{m['lpush']:>6,.0f} {m['ltrim']:>6,.0f} {m['calls']:>6,.0f} "
                f"{m['reads']:>6,.0f} {m['script']:>9,.1f} {m['redis'] * 1000:>8,.0f}"
            )
    print(
        "(plan: fan-out task received -> plan_fanout's summary line, in the worker's log;\n"
        " worker ms: CPU of the push worker group per message, the fan-out included; µs/push:\n"
        " the same per push; evalsha, lpush, ltrim, cmds: Redis commands per message, a\n"
        " script's own included (LTRIM: only the decisions' script; LPUSH: also Celery's\n"
        " queue); reads: Redis's read events, at least one per round trip (a request over\n"
        " 16 KB takes several); script ms: Redis time in evalsha; redis ms: Redis's CPU)"
    )
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("\ntargets:")
    complete = all(
        run.result.delivered == run.result.expected and run.result.duplicates == 0 for run in runs
    )
    print(f"  every push delivered exactly once: {_verdict(complete)}")
    routed = all(not run.stray for run in runs)
    print(f"  each message planned and sent by its mode's push worker only: {_verdict(routed)}")
    kept = all(run.recorded == (run.watched if run.mode == "on" else 0) for run in runs)
    print(f"  decisions kept with decisions on, none with them off: {_verdict(kept)}")
    for case in cases:
        on, off = medians.get((case, "on")), medians.get((case, "off"))
        if on is None or off is None:
            continue
        rates = {
            mode: ", ".join(
                f"{run.result.rate:,.0f}" for run in runs if run.case == case and run.mode == mode
            )
            for mode in DECISION_MODES
        }
        ratio = on["rate"] / off["rate"]
        print(
            f"  {case.label}: pushes/s on/off {ratio:.2f}x (on: {rates['on']}; off: "
            f"{rates['off']}), planning {on['plan'] / off['plan']:.2f}x, worker CPU "
            f"{on['cpu'] / off['cpu']:.2f}x; at most 10% slower: {_verdict(ratio >= 0.9)}"
        )
        decided = case.members + 1  # the sender's decision too
        batches = -(-decided // 1000)
        calls = on["evalsha"] - off["evalsha"]
        reads = on["reads"] - off["reads"]
        batched = on["ltrim"] == decided and calls <= batches + 2 and reads < decided / 10
        print(
            f"  {case.label}: {decided:,} decisions kept per message ({on['ltrim']:,.0f} LTRIM,"
            f" only the script makes them) in {calls:+.0f} evalsha (one per 1,000: {batches})"
            f" and {reads:+,.0f} read events against off: no round trip per member: "
            f"{_verdict(batched)}"
        )


def run_decisions(args: argparse.Namespace) -> int:
    """Decisions on against off: two push workers, one consuming at a time; see the module's
    docstring."""
    from config import load_settings
    from webapp.delivery.channels.webpush.vapid import generate_vapid_keypair

    cases = decision_cases(args.decisions_cases)
    vapid = generate_vapid_keypair()
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="beacon-pipe-")))
        certs = make_certs(folder)
        for name in CA_VARIABLES:
            os.environ[name] = str(certs["ca"])
        service = CountingPushService(certs)
        stack.callback(service.close)
        bench, push_workers, others = stack.enter_context(
            pipeline(args, certs["ca"], service, vapid, push_variants=DECISION_MODES)
        )
        workers = dict(zip(DECISION_MODES, push_workers, strict=True))
        consumers = PushConsumers(bench.env["REDIS_URL"], workers)
        settings = load_settings({**os.environ, **bench.env})
        print(
            f"cost of notification decisions: web + unread ({args.unread_args}) + two push "
            f"workers ({args.worker_args}), DECISIONS_DAYS={settings.decisions_days:g} (on) and "
            f"0 (off), one consuming at a time; {args.backend}; PUSH_BATCH_SIZE="
            f"{settings.push_batch_size}, PUSH_SEND_CONCURRENCY={settings.push_send_concurrency}"
            f"; push service {service.origin} @ {args.decisions_latency:g} ms; "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        check_endpoint_accepted(bench, service)
        topics = []
        for case in cases:
            topic, sender = seed(bench.app, service, case.members, 1, subscribed=case.subscribed)
            topics.append((topic, sender, watched_members(bench.app, topic, sender)))
        # Warm up each worker: imports, database, JWT cache, then the TLS connections a big
        # message opens (the case with the most devices).
        big = max(range(len(cases)), key=lambda i: cases[i].subscribed)
        for mode in DECISION_MODES:
            consumers.switch(mode)
            service.reset(0)
            topic, sender = seed(bench.app, service, args.warmup, 1)
            send_and_watch(bench, service, [workers[mode]], others, topic, sender, args.warmup, 60)
            service.reset(0)
            topic, sender, _ = topics[big]
            _, stats, _, _ = send_and_watch(
                bench, service, [workers[mode]], others, topic, sender, cases[big].subscribed, 60
            )
            if stats["count"] < cases[big].subscribed:
                raise SystemExit(f"warm-up ({mode}): {stats['count']}/{cases[big].subscribed}")
        runs = []
        for case, (topic, sender, watched) in zip(cases, topics, strict=True):
            for mode in interleaved(args.decisions_repeats):
                consumers.switch(mode)
                run = measure_decisions(
                    bench, service, workers, others, case, topic, sender, watched, mode, args
                )
                runs.append(run)
                report_decision_row(run)
        report_decisions(runs, os.getloadavg())
    return 0


def watched_members(app: Any, topic: Any, sender: Any) -> list[str]:
    """Two members of the topic whose decision lists the bench watches: one with a device and
    one without (when the case has such members)."""
    from sqlalchemy import select

    from webapp.extensions import db
    from webapp.models import PushSubscription, TopicMember

    members = select(TopicMember.user_id).where(
        TopicMember.topic_id == uuid.UUID(topic.topic_id),
        TopicMember.user_id != uuid.UUID(sender.id),
    )
    with app.app_context():
        with_device = db.session.execute(
            select(PushSubscription.user_id).where(PushSubscription.user_id.in_(members)).limit(1)
        ).scalar()
        without = db.session.execute(
            members.where(
                TopicMember.user_id.not_in(select(PushSubscription.user_id).distinct())
            ).limit(1)
        ).scalar()
    return [str(uid) for uid in (with_device, without) if uid is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="end-to-end Web Push pipeline")
    parser.add_argument("--members", default="1000,5000", help="offline members per message")
    parser.add_argument(
        "--channels",
        default=",".join(CHANNELS),
        help="channels, each run on its own per configuration (Web Push: the baseline)",
    )
    parser.add_argument(
        "--fake-mode",
        default="counting",
        choices=("counting", "full"),
        help="the fake FCM and APNs: verify the token and count, or check and record all",
    )
    parser.add_argument("--devices", default="1,3", help="subscriptions per member")
    parser.add_argument("--latency", default="0,50", help="push service answer delay, ms")
    parser.add_argument("--push-workers", type=int, default=1, help="push worker processes")
    parser.add_argument("--worker-args", default="-P gevent -c 100", help="push worker pool")
    parser.add_argument("--unread-args", default="-c 4", help="unread worker pool")
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument(
        "--coalesce-window",
        type=float,
        default=0.0,
        help="PUSH_COALESCE_WINDOW (the first message is sent at once anyway)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="more settings for every Beacon process (PUSH_BATCH_SIZE=...)",
    )
    parser.add_argument("--warmup", type=int, default=300, help="members of the warm-up message")
    parser.add_argument("--ceiling-n", type=int, default=3000, help="pushes, sender-only run")
    parser.add_argument("--naive-n", type=int, default=300, help="pushes, naive pywebpush run")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for one message's pushes"
    )
    parser.add_argument(
        "--decisions-cost",
        action="store_true",
        help="decisions on (DECISIONS_DAYS default) against off (0), instead of the matrix"
        " (Web Push only; --members, --devices, --latency, --channels do not apply)",
    )
    parser.add_argument(
        "--decisions-cases",
        default="5000:0.9,5000:0.1",
        help="MEMBERS:SHARE,...: topic members, and the share of them with one device",
    )
    parser.add_argument(
        "--decisions-repeats", type=int, default=4, help="messages per case and mode"
    )
    parser.add_argument(
        "--decisions-latency", type=float, default=0.0, help="push service delay, ms"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument("--serve-push-service", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_push_service:
        asyncio.run(_serve(args.cert, args.key, 0.0))
        return 0

    from bench.stack import run_until_terminated

    return run_until_terminated(run, args)


if __name__ == "__main__":
    sys.exit(main())
