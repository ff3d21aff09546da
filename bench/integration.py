"""The integration API end to end: publishing over REST against ``send_message``, and webhooks.

Real processes on loopback, as the Procfile runs them: a private Redis, SQLite (or a private
PostgreSQL with ``--backend postgresql``), the web process (``wsgi.py``, gevent), an ``unread``
worker and one ``webhooks`` worker (``-P gevent -c 50``), plus a webhook receiver in its own
process (asyncio, HTTP/1.1 keep-alive, allowed with ``WEBHOOK_ALLOWED_HOSTS``): on ``/fast`` it
answers 200 at once and notes each event's arrival, on ``/hang`` it never answers (the worker
gives up after ``WEBHOOK_TIMEOUT``). Web Push is off (no VAPID keys): the message path is the
rest of it. The users, the room, the topic and the memberships are made through the
integration API itself, the users' tokens too (``POST /api/admin/users/{id}/token``); the key
with the CLI's command, in process.

One topic of ``--members`` members (10): ``--concurrency`` (4) of them are senders, connected
and joined to the topic (as a user with the conversation open); ``--observers`` (3) more are
connected and joined and only receive; the rest are offline (unread counts only). The same
connections stay up through every phase, so every message reaches the same audience whichever
way it was posted. Each message carries its send time in its body; observers note
send -> ``new_message`` and the message's ``created_at`` (stamped in the web process, just
before the commit) -> ``new_message``.

1. Publishing, no webhook, each mode a closed loop of ``--messages`` messages (each of the
   ``--concurrency`` senders sends its next message when the previous one was answered):
   ``send_message`` over Socket.IO, acked (the baseline); ``POST /api/admin/messages`` from as
   many HTTP clients on keep-alive connections (aiohttp); the same with an ``idempotency_key``
   each; the same on a new connection per request (no keep-alive: tells what the delayed ACK
   costs, see bench/README.md); the keyed requests sent again (replays: answered with the first
   message, nothing posted, no ``new_message``). Then ``send_message`` and ``POST`` in an open
   loop, ``--rate`` messages/s for ``--duration`` s. ``--rounds`` rounds, modes interleaved;
   the tables pool the rounds. Last, ``--bursts`` bursts of ``--burst`` ``POST``s in flight
   at once, a second apart (a backend posting a batch; this found the pool deadlock that
   ``webapp/platform/events.py`` describes: 30 s stalls and ``503``s).
2. Webhooks on the message path: ``send_message`` closed loop, then open loop, with no hook,
   then with one hook for ``message.created`` to ``/fast``; later (after part 3) with no hook
   again, then with one to ``/hang`` (measured once the worker's slots hold hanging requests).
   Each hook row is compared with the no-hook run just before it.
3. Webhook delivery: the ``webhooks`` worker is stopped, ``--backlog`` messages are posted
   (their events wait in the broker), a new worker is started and the receiver times the
   drain: events/s of one worker from its start, and its CPU per event. The lag from
   ``created_at`` to the webhook's arrival is the receiver's, in part 2's ``/fast`` runs.

CPU: the process groups' user+system time from ``/proc``, from the phase's start until the
processes are quiet again (so a worker's tail is counted), per message. The bench client (the
driver: sockets and HTTP, one asyncio loop) and the receiver share the 2 cores; the driver's
CPU is reported too.

    .venv/bin/python bench/integration.py                         # ~4 minutes
    .venv/bin/python bench/integration.py --backend postgresql
    .venv/bin/python bench/integration.py --messages 100 --rounds 1 --duration 3 --backlog 300
    .venv/bin/python bench/integration.py --messages 2000 --rounds 3 --backlog 5000
    .venv/bin/python bench/integration.py --profile /tmp/prof       # py-spy, web and worker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

HOST = "127.0.0.1"
TAG = "ib"  # first word of every bench message: "ib <phase> <send time> <n>"


# -- the webhook receiver (its own process: ``--serve-receiver``) -----------------------------
class _Tally:
    """What the receiver saw: per phase (from the message text) the deliveries to ``/fast``;
    the requests held on ``/hang`` and how long until the sender gave each up."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.phases: dict[str, dict[str, Any]] = {}
        self.held = 0
        self.given_up: list[float] = []
        self.connections = 0

    def phase(self, name: str) -> dict[str, Any]:
        return self.phases.setdefault(
            name, {"count": 0, "ids": set(), "first": None, "last": None, "lags": []}
        )

    def stats(self, name: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "held": self.held,
            "given_up": len(self.given_up),
            "held_for": statistics.median(self.given_up) if self.given_up else None,
            "connections": self.connections,
            "total": sum(p["count"] for p in self.phases.values()),
        }
        if name is not None:
            p = self.phase(name)
            out.update(
                count=p["count"],
                distinct=len(p["ids"]),
                first=p["first"],
                last=p["last"],
                lags=p["lags"],
            )
        return out


_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def _reply(status: str, body: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


async def _receive(tally: _Tally, reader: asyncio.StreamReader, writer: Any) -> None:
    """One keep-alive connection, one request after another."""
    tally.connections += 1
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip() or 0)
            body = await reader.readexactly(length) if length else b""
            if method == "POST" and path.startswith("/fast"):
                now = time.time()
                try:
                    event = json.loads(body)
                    message = event["data"]["message"]
                    phase = message["body"].split(" ", 2)[1]
                    lag = now - datetime.fromisoformat(message["created_at"]).timestamp()
                    event_id = event["id"]
                except (ValueError, KeyError, IndexError, TypeError):
                    phase, lag, event_id = "?", None, None
                record = tally.phase(phase)
                record["count"] += 1
                record["ids"].add(event_id)
                record["first"] = now if record["first"] is None else record["first"]
                record["last"] = now
                if lag is not None:
                    record["lags"].append(lag)
                writer.write(_OK)
            elif method == "POST" and path.startswith("/hang"):
                tally.held += 1
                started = time.monotonic()
                with contextlib.suppress(ConnectionError):
                    while await reader.read(4096):  # never answer; wait for the sender to quit
                        pass
                tally.given_up.append(time.monotonic() - started)
                return
            elif path.startswith("/_stats"):
                _, _, phase = path.partition("?phase=")
                writer.write(_reply("200 OK", json.dumps(tally.stats(phase or None)).encode()))
            elif path.startswith("/_reset"):
                tally.reset()
                writer.write(_reply("200 OK", b"{}"))
            else:
                writer.write(_reply("404 Not Found"))
            await writer.drain()
    except ConnectionError:
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve_receiver() -> None:
    tally = _Tally()
    server = await asyncio.start_server(lambda r, w: _receive(tally, r, w), HOST, 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


class Receiver:
    """The receiver's child process."""

    def __init__(self, startup_timeout: float = 20.0) -> None:
        import selectors

        self._errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-receiver"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            ready = selector.select(startup_timeout)
        port = self.proc.stdout.readline().strip() if ready else ""
        if not port.isdigit():
            self.close()
            self._errors.seek(0)
            raise RuntimeError("receiver did not start: " + self._errors.read().decode()[-2000:])
        self.port = int(port)
        self.origin = f"http://{HOST}:{self.port}"

    def close(self) -> None:
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


# -- figures -----------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms2(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{_pct(values, 0.5) * 1e3:.1f}/{_pct(values, 0.99) * 1e3:.1f}"


@dataclass
class Phase:
    """One measured run of sends; several with the same ``label`` are pooled in the tables."""

    name: str  # tag in the message text (no spaces)
    label: str
    kind: str  # "closed", "open", "replay", "backlog"
    sent: int = 0
    ok: int = 0
    replayed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0  # first send -> last answer, seconds
    lat: list[float] = field(default_factory=list)  # send -> answer (ack or HTTP)
    new_lat: list[float] = field(default_factory=list)  # send -> new_message at observers
    new_out: list[float] = field(default_factory=list)  # created_at -> new_message
    news: int = 0
    expected_news: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds, phase start -> quiet
    hooks: dict[str, Any] = field(default_factory=dict)  # receiver's figures for the phase

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


def pooled(phases: list[Phase]) -> Phase:
    first = phases[0]
    out = Phase(first.name, first.label, first.kind)
    for p in phases:
        out.sent += p.sent
        out.ok += p.ok
        out.replayed += p.replayed
        for code, n in p.errors.items():
            out.errors[code] = out.errors.get(code, 0) + n
        out.wall += p.wall
        out.lat += p.lat
        out.new_lat += p.new_lat
        out.new_out += p.new_out
        out.news += p.news
        out.expected_news += p.expected_news
        for name, s in p.cpu.items():
            out.cpu[name] = out.cpu.get(name, 0.0) + s
        for name, v in p.hooks.items():
            if isinstance(v, list):
                out.hooks[name] = out.hooks.get(name, []) + v
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out.hooks[name] = out.hooks.get(name, 0) + v
    return out


def _busy_seconds() -> float:
    """CPU time the whole machine spent busy (every process, ours or not), from /proc/stat."""
    from bench.stack import CLK_TCK

    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # all but idle and iowait


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Member:
    external_id: str
    user_id: str
    token: str


class Driver:
    """The bench's side: the members' Socket.IO connections, the HTTP clients, the phases."""

    def __init__(self, args: argparse.Namespace, bench: Any, receiver: Receiver, key: str) -> None:
        self.args = args
        self.bench = bench
        self.url = bench.url
        self.receiver = receiver
        self.key = key
        self.members: list[Member] = []
        self.topic_ext = ""
        self.topic_id = ""
        self.room_id = ""
        self.senders: list[Any] = []  # AsyncClients of the first ``concurrency`` members
        self.observers: list[Any] = []
        self.phases: dict[str, Phase] = {}
        self.session: Any = None
        self.closing: Any = None  # aiohttp session without keep-alive
        self.bursting: Any = None  # aiohttp session for bursts
        self.webhooks_worker: Any = None
        self.unread_worker: Any = None
        self.keyed_requests: list[tuple[int, dict[str, Any]]] = []  # (sender, body) to replay

    # -- set-up through the integration API (sync, before the loop starts) --------------------
    def provision(self) -> None:
        import requests

        run = uuid.uuid4().hex[:6]
        with requests.Session() as http:
            http.trust_env = False
            http.headers["Authorization"] = f"Bearer {self.key}"

            def call(method: str, path: str, body: Any = None, want: tuple[int, ...] = (200, 201)):
                r = http.request(method, self.url + path, json=body, timeout=30)
                if r.status_code not in want:
                    raise SystemExit(f"{method} {path}: {r.status_code} {r.text}")
                return r.json() if r.content else None

            room_ext, self.topic_ext = f"bench-room-{run}", f"bench-topic-{run}"
            room = call("PUT", f"/api/admin/rooms/{room_ext}", {"name": f"Bench {run}"})
            topic = call(
                "PUT", f"/api/admin/rooms/{room_ext}/topics/{self.topic_ext}", {"name": "bench"}
            )
            self.room_id, self.topic_id = room["id"], topic["id"]
            for i in range(self.args.members):
                ext = f"bench-{run}-{i}"
                user = call(
                    "PUT",
                    f"/api/admin/users/{ext}",
                    {"username": ext, "display_name": f"Bench {i}"},
                )
                call("PUT", f"/api/admin/topics/{self.topic_ext}/members/{ext}")
                token = call("POST", f"/api/admin/users/{ext}/token", {"ttl": 6 * 3600})
                self.members.append(Member(ext, user["id"], token["token"]))

    # -- connections ---------------------------------------------------------------------------
    async def connect(self) -> None:
        import aiohttp

        from bench.load import _lean_client_class

        client_class = _lean_client_class()
        c, o = self.args.concurrency, self.args.observers

        async def open_one(member: Member, observe: bool) -> Any:
            sio = client_class(reconnection=False, logger=False, engineio_logger=False, json=json)
            if observe:
                sio.on("new_message", self._on_new)
            await sio.connect(
                self.url, auth={"token": member.token}, transports=["websocket"], wait_timeout=30
            )
            ack = await sio.call("join_topic", {"topic_id": self.topic_id}, timeout=30)
            if not ack.get("ok"):
                raise SystemExit(f"join_topic refused: {ack}")
            return sio

        self.senders = [await open_one(m, False) for m in self.members[:c]]
        self.observers = [await open_one(m, True) for m in self.members[c : c + o]]
        headers = {"Authorization": f"Bearer {self.key}"}
        timeout = aiohttp.ClientTimeout(total=60)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=c), headers=headers, timeout=timeout
        )
        # One TCP connection per request: the first answer on a connection is not held back
        # by the delayed ACK (see the README), so this tells what that wait costs.
        self.closing = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=c, force_close=True),
            headers=headers,
            timeout=timeout,
        )
        # A backend posting a batch at once: ``--burst`` requests in flight.
        self.bursting = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.args.burst), headers=headers, timeout=timeout
        )

    async def close(self) -> None:
        for session in (self.session, self.closing, self.bursting):
            if session is not None:
                await session.close()
        for sio in self.senders + self.observers:
            with contextlib.suppress(Exception):
                await sio.disconnect()

    def _on_new(self, payload: dict[str, Any]) -> None:
        now = time.time()
        parts = payload.get("body", "").split(" ")
        if len(parts) < 3 or parts[0] != TAG:
            return
        phase = self.phases.get(parts[1])
        if phase is None:
            return
        phase.news += 1
        phase.new_lat.append(now - float(parts[2]))
        created = payload.get("created_at")
        if created:
            phase.new_out.append(now - datetime.fromisoformat(created).timestamp())

    # -- sending -------------------------------------------------------------------------------
    def _text(self, phase: Phase, k: int) -> str:
        return f"{TAG} {phase.name} {time.time():.6f} {k}"

    async def _socket_send(self, phase: Phase, sender: int, k: int) -> None:
        sio = self.senders[sender]
        body = {"topic_id": self.topic_id, "room_id": self.room_id, "message": self._text(phase, k)}
        started = time.perf_counter()
        phase.sent += 1
        try:
            ack = await sio.call("send_message", body, timeout=60)
        except Exception as exc:  # noqa: BLE001  (counted, reported)
            phase.error(type(exc).__name__)
            return
        phase.lat.append(time.perf_counter() - started)
        if isinstance(ack, dict) and ack.get("ok"):
            phase.ok += 1
        else:
            phase.error(ack.get("error", "?") if isinstance(ack, dict) else repr(ack))

    async def _rest_post(
        self, phase: Phase, sender: int, body: dict[str, Any], *, session: Any = None
    ) -> None:
        session = session or self.session
        started = time.perf_counter()
        phase.sent += 1
        try:
            async with session.post(f"{self.url}/api/admin/messages", json=body) as r:
                answer = await r.read()
                status, replayed = r.status, r.headers.get("Idempotent-Replayed") == "true"
        except Exception as exc:  # noqa: BLE001
            phase.error(type(exc).__name__)
            return
        phase.lat.append(time.perf_counter() - started)
        if status == 201:
            phase.ok += 1
            phase.replayed += replayed
        else:
            try:
                phase.error(f"{status} {json.loads(answer).get('error')}")
            except ValueError:
                phase.error(str(status))

    def _rest_body(self, phase: Phase, sender: int, k: int, keyed: bool) -> dict[str, Any]:
        body = {
            "topic": self.topic_ext,
            "sender": self.members[sender].external_id,
            "message": self._text(phase, k),
        }
        if keyed:
            body["idempotency_key"] = f"bench:{phase.name}:{sender}:{k}"
            self.keyed_requests.append((sender, body))
        return body

    def sender_for(self, mode: str) -> Callable[[Phase, int, int], Awaitable[None]]:
        if mode == "socket":
            return self._socket_send

        session = {"close": self.closing, "burst": self.bursting}.get(mode, self.session)

        async def send(phase: Phase, sender: int, k: int) -> None:
            body = self._rest_body(phase, sender, k, mode == "key")
            await self._rest_post(phase, sender, body, session=session)

        return send

    async def closed_loop(self, phase: Phase, n: int, send: Callable[..., Awaitable[None]]) -> None:
        c = self.args.concurrency

        async def one_sender(i: int) -> None:
            for k in range(i, n, c):
                await send(phase, i, k)

        started = time.perf_counter()
        await asyncio.gather(*(one_sender(i) for i in range(c)))
        phase.wall = time.perf_counter() - started

    async def bursts(
        self, phase: Phase, size: int, count: int, send: Callable[..., Awaitable[None]]
    ) -> None:
        """``size`` sends at once, ``count`` times, a second apart (or when the last ended)."""
        c = self.args.concurrency
        started = time.perf_counter()
        for b in range(count):
            t0 = time.perf_counter()
            await asyncio.gather(*(send(phase, k % c, b * size + k) for k in range(size)))
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))
        phase.wall = time.perf_counter() - started

    async def open_loop(
        self, phase: Phase, rate: float, duration: float, send: Callable[..., Awaitable[None]]
    ) -> None:
        """``rate`` sends a second, whatever the answers (senders in turn)."""
        c = self.args.concurrency
        tasks: set[asyncio.Task] = set()
        started = time.perf_counter()
        k = 0
        while k / rate < duration:
            delay = started + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(phase, k % c, k))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        phase.wall = time.perf_counter() - started

    async def replay(self, phase: Phase, requests: list[tuple[int, dict[str, Any]]]) -> None:
        """The keyed requests, again (same key, same request): answered with the first
        message each; ``phase.news`` counts the ``new_message`` they caused (none expected)."""
        c = self.args.concurrency
        news_before = sum(p.news for p in self.phases.values())

        async def one_sender(i: int) -> None:
            for sender, body in requests[i::c]:
                await self._rest_post(phase, sender, body)

        started = time.perf_counter()
        await asyncio.gather(*(one_sender(i) for i in range(c)))
        phase.wall = time.perf_counter() - started
        await asyncio.sleep(1.0)  # time for a wrongly repeated new_message to arrive
        phase.news = sum(p.news for p in self.phases.values()) - news_before

    # -- around each phase ---------------------------------------------------------------------
    def procs(self) -> dict[str, int]:
        out = {
            "web": self.bench.web.pid,
            "unread": self.unread_worker.pid,
            "receiver": self.receiver.pid,
        }
        if self.webhooks_worker is not None and self.webhooks_worker.alive:
            out["webhooks"] = self.webhooks_worker.pid
        if self.bench.redis is not None and self.bench.redis.pid:
            out["redis"] = self.bench.redis.pid
        return out

    def cpu(self) -> dict[str, float]:
        from bench.stack import cpu_seconds, group_cpu_seconds

        out = {}
        for name, pid in self.procs().items():
            try:
                out[name] = (
                    group_cpu_seconds(pid)
                    if name in ("web", "unread", "webhooks")
                    else cpu_seconds(pid)
                )
            except OSError:
                out[name] = 0.0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out["driver"] = ru.ru_utime + ru.ru_stime
        out["box"] = _busy_seconds()
        out["wall"] = time.monotonic()
        return out

    async def quiet(self, *, still: float = 0.5, limit: float = 20.0) -> None:
        """Until the Beacon processes' CPU stops growing (the work of the last phase is done)."""
        names = ("web", "unread", "webhooks", "redis")
        deadline = time.monotonic() + limit
        before = self.cpu()
        while time.monotonic() < deadline:
            await asyncio.sleep(still)
            now = self.cpu()
            if sum(now.get(n, 0) - before.get(n, 0) for n in names) < 0.03 * still:
                return
            before = now

    async def drain(self, phase: Phase, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while phase.news < phase.expected_news and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def receiver_stats(self, phase: str | None = None) -> dict[str, Any]:
        query = f"?phase={phase}" if phase else ""
        async with self.session.get(f"{self.receiver.origin}/_stats{query}") as r:
            return await r.json()

    async def measure(
        self, label: str, kind: str, run: Callable[[Phase], Awaitable[None]], *, news: bool = True
    ) -> Phase:
        phase = Phase(f"p{len(self.phases)}", label, kind)
        self.phases[phase.name] = phase
        await self.quiet()
        before = self.cpu()
        with self.profiled(label):
            await run(phase)
            phase.expected_news = phase.ok * len(self.observers) if news else 0
            await self.drain(phase)
        await self.quiet()
        after = self.cpu()
        phase.cpu = {name: after[name] - before.get(name, after[name]) for name in after}
        phase.hooks = await self.receiver_stats(phase.name)
        print(f"  {row_text(phase)}", flush=True)
        return phase

    def profiled(self, label: str) -> Any:
        from bench.load import profiled

        out_dir = self.args.profile
        if not out_dir or label not in self.args.profile_phases.split(";"):
            return contextlib.nullcontext()
        name = label.replace(" ", "_").replace("/", "_")
        stack = contextlib.ExitStack()
        stack.enter_context(profiled(self.bench.web.pid, out_dir, f"web-{name}"))
        if self.webhooks_worker is not None and self.webhooks_worker.alive:
            stack.enter_context(
                profiled(self.webhooks_worker.pid, out_dir, f"webhooks-{name}", subprocesses=True)
            )
        return stack

    # -- hooks ---------------------------------------------------------------------------------
    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, f"{self.url}{path}", json=body) as r:
            if r.status >= 300:
                raise SystemExit(f"{method} {path}: {r.status} {await r.text()}")
            return await r.json() if r.status != 204 else None

    async def hook(self, path: str) -> str:
        hook = await self.admin(
            "POST",
            "/api/admin/webhooks",
            {"url": f"{self.receiver.origin}{path}", "events": ["message.created"]},
        )
        return hook["id"]

    async def start_webhooks_worker(self) -> None:
        from tests.conftest import start_worker

        self.webhooks_worker = await asyncio.to_thread(
            start_worker,
            f"webhooks{uuid.uuid4().hex[:4]}",
            self.bench.env,
            self.bench.log_dir,
            "webhooks",
            *shlex.split(self.args.webhooks_args),
        )

    def queue_depth(self, queue: str) -> int:
        return int(self.bench.redis_client().llen(queue))


async def run_phases(driver: Driver) -> dict[str, list[Phase]]:
    args = driver.args
    results: dict[str, list[Phase]] = {"publish": [], "hooks": [], "delivery": []}
    await driver.connect()
    try:
        send = {m: driver.sender_for(m) for m in ("socket", "rest", "key", "close")}
        n, rate, duration = args.messages, args.rate, args.duration
        # Warm-up: imports, statement caches, connections, each path once.
        for mode in send:
            warm = Phase(f"w{mode}", "warm-up", "closed")
            driver.phases[warm.name] = warm
            await driver.closed_loop(warm, args.warmup, send[mode])
        driver.keyed_requests.clear()

        print(f"1. publishing (no webhook), {args.rounds} rounds", flush=True)
        for _ in range(args.rounds):
            for mode in ("socket", "rest", "key", "close"):
                results["publish"].append(
                    await driver.measure(
                        LABELS[mode], "closed", lambda p, m=mode: driver.closed_loop(p, n, send[m])
                    )
                )
            keyed, driver.keyed_requests = driver.keyed_requests, []
            results["publish"].append(
                await driver.measure(
                    LABELS["replay"],
                    "replay",
                    lambda p, keyed=keyed: driver.replay(p, keyed),
                    news=False,
                )
            )
            for mode in ("socket", "rest"):
                results["publish"].append(
                    await driver.measure(
                        f"{LABELS[mode]} @ {rate:g}/s",
                        "open",
                        lambda p, m=mode: driver.open_loop(p, rate, duration, send[m]),
                    )
                )
            driver.keyed_requests.clear()
        if args.burst and args.bursts:
            burst = driver.sender_for("burst")
            results["publish"].append(
                await driver.measure(
                    f"POST, bursts of {args.burst}",
                    "burst",
                    lambda p: driver.bursts(p, args.burst, args.bursts, burst),
                )
            )

        print("2. send_message without, then with a webhook for message.created", flush=True)

        async def hook_case(label: str) -> None:
            for kind in ("closed", "open"):
                results["hooks"].append(
                    await driver.measure(
                        f"{label}, closed" if kind == "closed" else f"{label} @ {rate:g}/s",
                        kind,
                        (lambda p: driver.closed_loop(p, n, send["socket"]))
                        if kind == "closed"
                        else (lambda p: driver.open_loop(p, rate, duration, send["socket"])),
                    )
                )

        await hook_case("no hook (a)")
        fast = await driver.hook("/fast")
        await hook_case("hook 200")

        print("3. webhook delivery: a backlog drained by one new worker", flush=True)
        await asyncio.to_thread(driver.webhooks_worker.stop)
        backlog = await driver.measure(
            "backlog posted",
            "closed",
            lambda p: driver.closed_loop(p, args.backlog, send["socket"]),
        )
        queued = driver.queue_depth("webhooks")
        await driver.start_webhooks_worker()
        ready = time.time()
        cpu0 = driver.cpu()["webhooks"]
        deadline = time.monotonic() + args.drain_timeout
        with driver.profiled("drain"):
            while time.monotonic() < deadline:
                if (await driver.receiver_stats(backlog.name))["count"] >= backlog.ok:
                    break
                await asyncio.sleep(0.1)
            await driver.quiet(limit=10)
        stats = await driver.receiver_stats(backlog.name)
        drain = Phase("drain", "backlog drained", "drain")
        drain.ok, drain.sent = stats["count"], queued
        drain.wall = (stats["last"] - ready) if stats["last"] else 0.0
        drain.cpu = {"webhooks": driver.cpu()["webhooks"] - cpu0}
        drain.hooks = {**stats, "ready": ready, "expected": backlog.ok}
        results["delivery"] += [backlog, drain]
        print(f"  {drain_text(drain)}", flush=True)

        print("2'. send_message without, then with a webhook whose receiver hangs", flush=True)
        await driver.admin("DELETE", f"/api/admin/webhooks/{fast}")
        await hook_case("no hook (b)")
        hang = await driver.hook("/hang")
        # Fill the worker's slots with hanging deliveries before measuring.
        words = shlex.split(args.webhooks_args)
        slots = int(words[words.index("-c") + 1]) if "-c" in words[:-1] else 50
        fill = Phase("fill", "fill", "closed")
        driver.phases[fill.name] = fill
        await driver.closed_loop(fill, slots + 10, send["socket"])
        deadline = time.monotonic() + 30
        while (await driver.receiver_stats())["held"] < slots and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await hook_case("hook hangs")
        stats = await driver.receiver_stats()
        state = await driver.admin("GET", f"/api/admin/webhooks/{hang}")
        results["hooks"][-1].hooks.update(
            held=stats["held"],
            given_up=stats["given_up"],
            held_for=stats["held_for"],
            queued=driver.queue_depth("webhooks"),
            enabled=state["enabled"],
            failures=state["consecutive_failures"],
        )
    finally:
        await driver.close()
    return results


# -- report ------------------------------------------------------------------------------------
LABELS = {
    "socket": "send_message (socket)",
    "rest": "POST /messages",
    "key": "POST + idempotency_key",
    "close": "POST, new connection each",
    "replay": "POST, key replayed",
}
HEADER = (
    f"{'':<30} {'msgs':>5} {'msg/s':>5} {'x msg/s':>7} {'answer p50/p99':>15} "
    f"{'new_msg p50/p99':>15} {'x p50/p99':>11} {'commit->new_msg':>15} {'web':>6} "
    f"{'unread':>6} {'hooks':>6} {'driver':>6} {'box':>4} {'hook got':>8}  notes"
)


def _cpu_ms(p: Phase, name: str, n: int) -> str:
    s = p.cpu.get(name)
    return "-" if s is None or not n else f"{s / n * 1e3:.2f}"


def _rate(p: Phase) -> float:
    if not p.wall:
        return 0.0
    return (p.sent if p.kind == "open" else p.ok) / p.wall


def row_text(p: Phase, base: Phase | None = None) -> str:
    n = p.ok or 1
    x_rate = x_lat = "-"
    if base is not None and _rate(base) and p.kind in ("closed", "replay"):
        x_rate = f"{_rate(p) / _rate(base):.2f}x"
    if base is not None and base.new_lat and p.new_lat:
        x_lat = (
            f"{_pct(p.new_lat, 0.5) / _pct(base.new_lat, 0.5):.1f}/"
            f"{_pct(p.new_lat, 0.99) / _pct(base.new_lat, 0.99):.1f}x"
        )
    notes = [f"{k} {v}" for k, v in p.errors.items()]
    drops = p.expected_news - p.news
    if drops and p.kind != "replay":
        notes.append(f"drops {drops}")
    if p.kind == "replay":
        notes.append(f"replayed {p.replayed}/{p.ok}, new_message {p.news}")
    if p.kind == "burst" and p.lat:
        notes.append(f"answer max {max(p.lat) * 1e3:,.0f} ms")
    return (
        f"{p.label:<30} {p.ok:>5} {_rate(p):>5.0f} {x_rate:>7} {_ms2(p.lat):>15} "
        f"{_ms2(p.new_lat):>15} {x_lat:>11} {_ms2(p.new_out):>15} {_cpu_ms(p, 'web', n):>6} "
        f"{_cpu_ms(p, 'unread', n):>6} {_cpu_ms(p, 'webhooks', n):>6} "
        f"{_cpu_ms(p, 'driver', n):>6} {_box(p):>4} {p.hooks.get('count', 0):>8}  "
        f"{', '.join(notes)}"
    )


def _box(p: Phase) -> str:
    """Cores of the machine busy during the phase (any process: ours, PostgreSQL's, others')."""
    wall = p.cpu.get("wall")
    return f"{p.cpu['box'] / wall:.2f}" if wall and "box" in p.cpu else "-"


def drain_text(d: Phase) -> str:
    h = d.hooks
    per = d.cpu["webhooks"] / d.ok * 1e3 if d.ok else float("nan")
    first = (h["first"] - h["ready"]) if h.get("first") else float("nan")
    deliveries = (
        (d.ok / (h["last"] - h["first"])) if h.get("first") and h["last"] > h["first"] else 0
    )
    return (
        f"{d.ok}/{h['expected']} events delivered ({h['distinct']} distinct, {d.sent} dispatch "
        f"tasks were queued), the last {d.wall:.2f} s after the worker was ready: "
        f"{d.ok / d.wall if d.wall else 0:,.0f} events/s; the first came after {first:.2f} s "
        f"(the dispatch tasks, queued first, ran first), then {deliveries:,.0f} deliveries/s; "
        f"worker CPU {per:.2f} ms per event"
    )


def report(results: dict[str, list[Phase]], args: argparse.Namespace, load: Any) -> None:
    def by_label(phases: list[Phase]) -> dict[str, Phase]:
        groups: dict[str, list[Phase]] = {}
        for p in phases:
            groups.setdefault(p.label, []).append(p)
        return {label: pooled(ps) for label, ps in groups.items()}

    publish = by_label(results["publish"])
    base_closed = publish[LABELS["socket"]]
    base_open = publish[f"{LABELS['socket']} @ {args.rate:g}/s"]
    units = (
        "CPU ms per message: web, unread worker, webhooks worker, bench client; box: cores "
        "of the machine busy (any process)"
    )
    print()
    print(
        f"1. publishing, no webhook: {args.concurrency} senders / HTTP clients; closed loop "
        f"({args.messages} messages), then open loop ({args.rate:g}/s for {args.duration:g} s); "
        f"{args.rounds} rounds pooled. x: against send_message in the same loop. {units}."
    )
    print(HEADER)
    for p in publish.values():
        base = {"open": base_open, "burst": None}.get(p.kind, base_closed)
        print(row_text(p, base))

    print()
    print(
        "2. send_message with a webhook for message.created (x: against the 'no hook' run just "
        "before it; 'no hook (a)' against part 1's send_message)"
    )
    print(HEADER)
    hooks = by_label(results["hooks"])
    before = {"closed": base_closed, "open": base_open}
    for p in hooks.values():
        print(row_text(p, before[p.kind]))
        if p.label.startswith("no hook"):
            before[p.kind] = p
    hang = results["hooks"][-1].hooks
    print(
        f"   hanging receiver: {hang.get('held')} requests held, {hang.get('given_up')} given up "
        f"by the worker (median after {hang.get('held_for') or float('nan'):.2f} s; "
        f"WEBHOOK_TIMEOUT={args.webhook_timeout:g}); {hang.get('queued')} tasks waiting in the "
        f"webhooks queue at the end; the hook still enabled: {hang.get('enabled')} "
        f"({hang.get('failures')} failed deliveries)"
    )

    print()
    backlog, drain = results["delivery"]
    send_rate = _rate(base_closed)
    rate = drain.ok / drain.wall if drain.wall else 0.0
    print(
        f"3. webhook delivery, one worker ({args.webhooks_args}); x: against send_message "
        f"msg/s of part 1 ({send_rate:,.0f}/s); lag: created_at -> arrival at the receiver"
    )
    print(
        f"{'':<30} {'events':>6} {'per s':>6} {'x':>6} {'worker ms/event':>15} "
        f"{'lag p50/p99 ms':>16}"
    )
    per = drain.cpu["webhooks"] / drain.ok * 1e3 if drain.ok else float("nan")
    print(
        f"{'backlog drain':<30} {drain.ok:>6} {rate:>6.0f} {rate / send_rate:>5.2f}x "
        f"{per:>15.2f} {'-':>16}"
    )
    for p in hooks.values():
        if p.label.startswith("hook 200"):
            got = p.hooks.get("count", 0)
            per = p.cpu.get("webhooks", 0) / got * 1e3 if got else float("nan")
            print(
                f"{'steady, ' + p.label:<30} {got:>6} {got / p.wall if p.wall else 0:>6.0f} "
                f"{'':>6} {per:>15.2f} {_ms2(p.hooks.get('lags', [])):>16}"
            )
    print(f"   {drain_text(drain)}")
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


# -- main --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from bench.stack import beacon_stack, raise_fd_limit
    from tests.conftest import start_worker

    raise_fd_limit()
    receiver = Receiver()
    try:
        env = {
            "WEBHOOK_ALLOWED_HOSTS": f"{HOST}:{receiver.port}",
            "WEBHOOK_TIMEOUT": f"{args.webhook_timeout:g}",
            # The bench's senders post far more than a person; the limits stay checked.
            "RATE_LIMIT_SEND_MESSAGE": "1000000/60s",
            "RATE_LIMIT_ADMIN": "1000000/60s",
            # Production's retry policy (the tests' base environment shortens it).
            "PUSH_MAX_RETRIES": "5",
            "PUSH_RETRY_BASE": "2",
            "PUSH_RETRY_MAX": "300",
            # The hanging hook must stay enabled while measured (a delivery fails for good
            # after its retries, within seconds for some: the default 10 could disable it).
            "WEBHOOK_DISABLE_AFTER": "1000000",
        }
        for item in args.env:
            name, _, value = item.partition("=")
            env[name] = value
        with beacon_stack(
            args.backend, worker=False, extra_env=env, keep_logs=args.keep_logs
        ) as bench:
            assert bench.log_dir is not None
            with contextlib.ExitStack() as procs:
                unread = start_worker(
                    "unread", bench.env, bench.log_dir, "unread", *shlex.split(args.unread_args)
                )
                procs.callback(unread.stop)
                key = bench.app.test_cli_runner().invoke(
                    args=["beacon", "create-api-key", f"bench-{uuid.uuid4().hex[:6]}"]
                )
                if key.exit_code != 0:
                    raise SystemExit(f"create-api-key failed: {key.output}")
                driver = Driver(args, bench, receiver, key.output.strip())
                driver.unread_worker = unread
                driver.provision()
                asyncio.run(driver.start_webhooks_worker())
                procs.callback(lambda: driver.webhooks_worker and driver.webhooks_worker.stop())
                print(
                    f"integration bench: web (gevent) + unread ({args.unread_args}) + webhooks "
                    f"({args.webhooks_args}), {args.backend}; topic of {args.members}, "
                    f"{args.concurrency} senders + {args.observers} observers connected and "
                    f"joined; receiver {receiver.origin}; {os.cpu_count()} CPUs, load "
                    f"{os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                results = asyncio.run(run_phases(driver))
                report(results, args, os.getloadavg())
            if args.keep_logs:
                print(f"logs: {bench.log_dir}")
    finally:
        receiver.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="integration API: publishing and webhooks")
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--members", type=int, default=10, help="members of the topic")
    parser.add_argument("--concurrency", type=int, default=4, help="senders / HTTP clients")
    parser.add_argument("--observers", type=int, default=3, help="members who only receive")
    parser.add_argument("--messages", type=int, default=500, help="messages per closed loop")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of part 1")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up messages per mode")
    parser.add_argument("--rate", type=float, default=50.0, help="open loop, messages/s")
    parser.add_argument("--duration", type=float, default=8.0, help="open loop, seconds")
    parser.add_argument("--burst", type=int, default=50, help="requests in flight in a burst")
    parser.add_argument("--bursts", type=int, default=5, help="bursts, a second apart")
    parser.add_argument("--backlog", type=int, default=1500, help="events for the drain")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--webhook-timeout", type=float, default=1.0, help="WEBHOOK_TIMEOUT")
    parser.add_argument("--unread-args", default="-c 4", help="unread worker pool")
    parser.add_argument("--webhooks-args", default="-P gevent -c 50", help="webhooks pool")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="more settings"
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the web and webhooks worker")
    parser.add_argument(
        "--profile-phases",
        default="send_message (socket);POST /messages;hook 200, closed;drain",
        help="labels of the phases to profile, separated by ';'",
    )
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver:
        asyncio.run(_serve_receiver())
        return 0
    if args.members < args.concurrency + args.observers:
        parser.error("--members must be at least --concurrency + --observers")

    from bench.stack import run_until_terminated

    return run_until_terminated(run, args)


if __name__ == "__main__":
    sys.exit(main())
