"""Load harness: N concurrent Socket.IO clients as distinct users, measured as users size a box.

Starts a private Beacon (Redis, SQLite or PostgreSQL, ``wsgi.py``, one ``unread`` worker; see
``bench/stack.py``) or targets a running one (``--url``; users and tokens are then written with
the database and JWT settings of the environment / ``.env``). It creates N users in topics of
``--topic-size`` members, and opens N python-socketio ``AsyncClient`` connections (websocket
transport), spread over ``--procs`` client processes with one asyncio loop each. Per run:

- connect rate (clients/s over the whole ramp, ``--connect-concurrency`` handshakes in flight
  per client process) and connect time p50/p99; presence checked exact in Redis afterwards;
- resident memory of the web process per connection: (RSS with N clients connected and
  joined - RSS before) / N;
- at ``--rate`` messages/s for ``--duration`` s (open loop: a send does not wait for the
  previous ack; random senders), delivery latency send -> ``new_message`` at the other
  members of the topic and send -> ``global_message_alert`` at every client (the stacks it
  starts run with ``ALERT_AUDIENCE=everyone``, the broadcast this measures; a ``--url`` target
  must too, or every client but the topic's members counts drops), p50/p99, and
  drops (expected - received deliveries, after a bounded drain); on a line below the row, the
  alert's p99.9 and max, and its time from the message's ``created_at`` (stamped by the web
  process before the commit) to the client, which leaves out the sending client and the
  handler's work before the insert;
- CPU use over the measured window: web process, worker, Redis, and the client processes
  (which share the same 2 cores: when they saturate, the latency is theirs, not Beacon's).

The send time travels in the message body (the preview carries it to the alert), and every
process reads the same clock. Prints one table row per run; ``--sweep`` runs growing N, each
on a fresh stack.

    .venv/bin/python bench/load.py --clients 1000 --rate 20 --duration 20
    .venv/bin/python bench/load.py --sweep 250,500,1000,2000 --rate 20
    .venv/bin/python bench/load.py --clients 5000 --rate 0     # connections held, no traffic
    .venv/bin/python bench/load.py --clients 1000 --rate 20 --duration 20 --slow-readers 1

``--slow-readers N`` adds N more users whose connections (raw websockets with a 4 KiB receive
buffer, members of the first topic) stop reading after joining and only answer pings: the web
process's RSS is sampled over the whole run (peak and end), and the line says whether the
server dropped them (``MAX_PENDING_BYTES``).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# --------------------------------------------------------------------------- client processes


@dataclass
class ClientSpec:
    user_id: str
    token: str
    topic_id: str
    room_id: str


def _pct(values: Any, q: float) -> float:
    if not len(values):
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _lean_client_class() -> type:
    """python-socketio's AsyncClient with a leaner Engine.IO websocket read loop.

    Stock python-socketio wraps every frame's ``ws.receive()`` in ``asyncio.wait_for`` (a Task
    per frame on Python 3.11) and runs every message handler as another Task. At 20,000 frames
    a second those Tasks cost more than the server's whole send path, and the clients share
    the server's 2 cores. The lean loop reads without a per-frame timer and dispatches each
    frame inline; decoding, handlers, acks and pings are python-socketio's unchanged.
    ``--client stock`` runs the library as shipped.
    """
    import engineio
    import socketio
    from engineio import packet as eio_packet

    class LeanEngineIO(engineio.AsyncClient):
        async def _read_loop_websocket(self) -> None:
            # No per-frame timeout (a timer per frame is another 15% of the client's CPU): a
            # dead server closes the socket, and every bench phase has its own deadline.
            while self.state == "connected" and self.write_loop_task:
                try:
                    msg = await self.ws.receive()
                except Exception:  # noqa: BLE001  (timeout, reset: the connection is gone)
                    await self.queue.put(None)
                    break
                data = msg.data
                if not isinstance(data, (str, bytes)):
                    await self.queue.put(None)
                    break
                pkt = eio_packet.Packet(encoded_packet=data)
                if pkt.packet_type == eio_packet.MESSAGE:
                    handler = self.handlers.get("message")
                    if handler is not None:
                        await handler(pkt.data)
                else:
                    await self._receive_packet(pkt)
            if self.write_loop_task:
                await self.write_loop_task
            if self.state == "connected":
                await self._trigger_event(
                    "disconnect", self.reason.TRANSPORT_ERROR, run_async=False
                )
                with contextlib.suppress(ValueError):
                    engineio.base_client.connected_clients.remove(self)
                await self._reset()

    class LeanClient(socketio.AsyncClient):
        def _engineio_client_class(self) -> type:
            return LeanEngineIO

    return LeanClient


class ClientProcess:
    """One asyncio loop driving many AsyncClients; obeys commands from the parent over a pipe."""

    def __init__(
        self, conn: Any, url: str, specs: list[ClientSpec], index: int, lean: bool
    ) -> None:
        self.lean = lean
        self.client_class: Any = None
        # The lean client decodes with the stdlib json module: engine.io's wrapper builds a
        # new decoder per packet (to bound integer sizes from untrusted peers).
        self.json: Any = None
        self.conn = conn
        self.url = url
        self.specs = specs
        self.index = index
        self.clients: list[Any] = [None] * len(specs)
        self.alert_lat = array.array("d")
        self.alert_sent = array.array("d")  # send time of each alert_lat entry
        self.alert_out = array.array("d")  # created_at (server clock) -> received
        self.new_lat = array.array("d")
        self.ack_lat = array.array("d")
        self.alerts = [0] * len(specs)  # measured alerts received, per client
        self.news = 0  # measured new_message deliveries to clients other than the sender
        self.status_events = 0
        self.measuring = False
        self.acks_ok = 0
        self.acks_failed: dict[str, int] = {}
        self.sent = 0
        self.disconnects = 0

    # -- handlers ------------------------------------------------------------------------
    def _handlers(self, sio: Any, i: int) -> None:
        me = self.specs[i].user_id

        def on_alert(payload: dict) -> None:
            t = time.time()
            parts = payload.get("preview", "").split(" ")
            if len(parts) >= 3 and parts[0] == "lb" and parts[1] == "m":
                sent = float(parts[2])
                self.alert_lat.append(t - sent)
                self.alert_sent.append(sent)
                created = payload.get("created_at")
                if created:
                    self.alert_out.append(t - datetime.fromisoformat(created).timestamp())
                self.alerts[i] += 1

        def on_new(payload: dict) -> None:
            t = time.time()
            parts = payload.get("body", "").split(" ")
            if len(parts) >= 3 and parts[0] == "lb" and parts[1] == "m":
                if payload["sender"]["id"] != me:
                    self.new_lat.append(t - float(parts[2]))
                    self.news += 1

        def on_status(_payload: dict) -> None:
            self.status_events += 1

        def on_disconnect(*_args: Any) -> None:
            self.disconnects += 1

        sio.on("global_message_alert", on_alert)
        sio.on("new_message", on_new)
        sio.on("user_status_change", on_status)
        sio.on("disconnect", on_disconnect)

    # -- phases --------------------------------------------------------------------------
    async def _open(self, i: int) -> Any:
        """A new connection for client ``i`` (its handlers attached); raises on refusal."""
        sio = self.client_class(
            reconnection=False, logger=False, engineio_logger=False, json=self.json
        )
        self._handlers(sio, i)
        await sio.connect(
            self.url,
            auth={"token": self.specs[i].token},
            transports=["websocket"],
            wait_timeout=60,
        )
        return sio

    async def _each(self, concurrency: int, step: Any) -> dict:
        """Run ``step(i)`` for every client, ``concurrency`` at a time; time and count them."""
        sem = asyncio.Semaphore(concurrency)
        times = array.array("d")
        errors: dict[str, int] = {}

        async def one(i: int) -> None:
            async with sem:
                start = time.perf_counter()
                try:
                    await step(i)
                except Exception as exc:  # noqa: BLE001  (counted, reported)
                    key = type(exc).__name__ + ": " + str(exc)[:80]
                    errors[key] = errors.get(key, 0) + 1
                    return
                times.append(time.perf_counter() - start)

        started = time.time()
        await asyncio.gather(*(one(i) for i in range(len(self.specs))))
        return {
            "connected": len(times),
            "times": times.tobytes(),
            "errors": errors,
            "start": started,
            "end": time.time(),
        }

    async def connect_all(self, concurrency: int) -> dict:
        async def step(i: int) -> None:
            self.clients[i] = await self._open(i)

        return await self._each(concurrency, step)

    async def reconnect_all(self, concurrency: int) -> dict:
        """Every client drops its connection and opens a new one (a network blip)."""

        async def step(i: int) -> None:
            old, self.clients[i] = self.clients[i], None
            if old is not None:
                await old.disconnect()
            self.clients[i] = await self._open(i)

        return await self._each(concurrency, step)

    async def swap_all(self, concurrency: int) -> dict:
        """Every client opens a second tab, then closes the first (no real status change)."""

        async def step(i: int) -> None:
            new = await self._open(i)
            old, self.clients[i] = self.clients[i], new
            if old is not None:
                await old.disconnect()

        return await self._each(concurrency, step)

    async def join_all(self, concurrency: int) -> dict:
        sem = asyncio.Semaphore(concurrency)
        failures: dict[str, int] = {}

        async def one(i: int) -> None:
            sio = self.clients[i]
            if sio is None:
                return
            spec = self.specs[i]
            async with sem:
                try:
                    ack = await sio.call(
                        "join_topic",
                        {"topic_id": spec.topic_id, "room_id": spec.room_id},
                        timeout=60,
                    )
                except Exception as exc:  # noqa: BLE001
                    ack = {"ok": False, "error": type(exc).__name__}
            if not ack.get("ok"):
                failures[ack.get("error")] = failures.get(ack.get("error"), 0) + 1

        await asyncio.gather(*(one(i) for i in range(len(self.specs))))
        return {"failures": failures}

    async def run(
        self, t_start: float, warmup: float, duration: float, rate: float, tune_gc: bool
    ) -> dict:
        """Open-loop sends from random connected clients at ``rate``/s; then report.

        ``tune_gc``: freeze the connections' objects first (as the web process freezes its
        start-up's), so a full collection walking thousands of connections does not pause a
        whole client process, an artifact of packing clients into one process that a
        browser, with its own heap per client, does not have.
        """
        if tune_gc:
            from webapp import gc_tuning

            gc_tuning.tune()
        rng = random.Random(self.index * 7919 + 17)
        live = [i for i, c in enumerate(self.clients) if c is not None]
        pending: set[asyncio.Future] = set()
        loop = asyncio.get_running_loop()
        ru0 = None
        t_measure = t_start + warmup
        t_end = t_measure + duration
        k = 0
        while rate > 0 and live:
            t_next = t_start + k / rate
            if t_next >= t_end:
                break
            delay = t_next - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            measured = t_next >= t_measure
            if measured and not self.measuring:
                self.measuring = True
                ru0 = resource.getrusage(resource.RUSAGE_SELF)
            i = rng.choice(live)
            spec = self.specs[i]
            t_send = time.time()
            tag = "m" if measured else "w"
            body = f"lb {tag} {t_send:.6f} {self.index} {k}"
            fut = loop.create_future()

            def on_ack(answer: Any = None, _t: float = t_send, _f: Any = fut, _m=measured) -> None:
                if isinstance(answer, dict) and answer.get("ok"):
                    if _m:
                        self.acks_ok += 1
                        self.ack_lat.append(time.time() - _t)
                else:
                    err = answer.get("error") if isinstance(answer, dict) else repr(answer)
                    self.acks_failed[err] = self.acks_failed.get(err, 0) + 1
                if not _f.done():
                    _f.set_result(None)

            await self.clients[i].emit(
                "send_message",
                {"topic_id": spec.topic_id, "room_id": spec.room_id, "message": body},
                callback=on_ack,
            )
            if measured:
                self.sent += 1
            pending.add(fut)
            fut.add_done_callback(pending.discard)
            k += 1
        if rate <= 0:
            self.measuring = True
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            await asyncio.sleep(max(0.0, t_end - time.time()))
        if pending:
            await asyncio.wait(pending, timeout=30)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime) if ru0 else 0.0
        return {
            "sent": self.sent,
            "acks_ok": self.acks_ok,
            "acks_failed": dict(self.acks_failed),
            "unacked": len(pending),
            "cpu": cpu,
            "wall": max(1e-9, time.time() - t_measure),
        }

    async def drain(self, expected_alerts: int, expected_news: int, wait: float) -> dict:
        """Wait (bounded) until every client has every measured alert; then stop measuring."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            live = [n for n, c in zip(self.alerts, self.clients, strict=True) if c is not None]
            if all(n >= expected_alerts for n in live) and self.news >= expected_news:
                break
            await asyncio.sleep(0.1)
        self.measuring = False
        live = [n for n, c in zip(self.alerts, self.clients, strict=True) if c is not None]
        return {
            "alert_lat": self.alert_lat.tobytes(),
            "alert_sent": self.alert_sent.tobytes(),
            "alert_out": self.alert_out.tobytes(),
            "new_lat": self.new_lat.tobytes(),
            "ack_lat": self.ack_lat.tobytes(),
            "alerts": sum(live),
            "alert_min": min(live) if live else 0,
            "clients": len(live),
            "news": self.news,
            "status_events": self.status_events,
            "disconnects": self.disconnects,
        }

    async def stats(self) -> dict:
        return {"status_events": self.status_events, "disconnects": self.disconnects}

    async def disconnect_all(self, concurrency: int = 100000) -> dict:
        async def step(i: int) -> None:
            old, self.clients[i] = self.clients[i], None
            if old is not None:
                await old.disconnect()

        return await self._each(concurrency, step)

    async def serve(self) -> None:
        import socketio

        self.client_class = _lean_client_class() if self.lean else socketio.AsyncClient
        if self.lean:
            import json

            self.json = json
        loop = asyncio.get_running_loop()
        while True:
            cmd, kwargs = await loop.run_in_executor(None, self.conn.recv)
            if cmd == "quit":
                self.conn.send({})
                return
            try:
                result = await getattr(self, cmd)(**kwargs)
            except Exception as exc:  # noqa: BLE001  (the parent reports it)
                result = {"error": f"{type(exc).__name__}: {exc}"}
            self.conn.send(result)


def _client_main(conn: Any, url: str, specs: list[ClientSpec], index: int, lean: bool) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(ClientProcess(conn, url, specs, index, lean).serve())


class ClientPool:
    """The parent's handle on the client processes: every command goes to all, results listed."""

    def __init__(self, url: str, specs: list[ClientSpec], procs: int, lean: bool) -> None:
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for p in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_client_main,
                args=(child, url, specs[p::procs], p, lean),
                daemon=True,
            )
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def call(self, cmd: str, timeout: float = 600, **kwargs: Any) -> list[dict]:
        for conn in self.conns:
            conn.send((cmd, kwargs))
        results = []
        deadline = time.monotonic() + timeout
        for conn in self.conns:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"client process did not answer {cmd!r} in {timeout:.0f}s")
            result = conn.recv()
            if "error" in result:
                raise RuntimeError(f"client process failed in {cmd}: {result['error']}")
            results.append(result)
        return results

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("quit", timeout=30)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


# --------------------------------------------------------------------------- slow readers


class SlowReaders:
    """Raw Engine.IO websockets that join their topic, then never read but answer pings."""

    def __init__(self, url: str, specs: list[ClientSpec]) -> None:
        import json
        import socket
        import threading

        import websocket

        self.conns: list[Any] = []
        self.failed: list[str] = []
        base = url.replace("http://", "ws://").replace("https://", "wss://")
        for spec in specs:
            ws = websocket.create_connection(
                f"{base}/socket.io/?EIO=4&transport=websocket",
                sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),),
                timeout=30,
            )
            ws.recv()  # OPEN
            ws.send("40" + json.dumps({"token": spec.token}))
            self._read_until(ws, "40{")
            ws.send("420" + json.dumps(["join_topic", {"topic_id": spec.topic_id}]))
            self._read_until(ws, "430")
            self.conns.append(ws)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._pong, daemon=True)
        self.thread.start()

    @staticmethod
    def _read_until(ws: Any, prefix: str) -> None:
        while not (message := ws.recv()).startswith(prefix):
            if message == "2":
                ws.send("3")

    def _pong(self) -> None:
        alive = list(self.conns)
        while alive and not self.stop.wait(1.0):
            for ws in list(alive):
                try:
                    ws.send("3")  # the PING it never read
                except Exception as exc:  # noqa: BLE001  (the server closed it)
                    self.failed.append(type(exc).__name__)
                    alive.remove(ws)

    def close(self) -> int:
        """Stop; the number of connections the server had closed (a send to them failed)."""
        self.stop.set()
        self.thread.join(5)
        for ws in self.conns:
            with contextlib.suppress(Exception):
                ws.sock.close()
        return len(self.failed)


class RssSampler:
    """The web process's RSS every 0.5 s in a thread: peak and last."""

    def __init__(self, pid: int | None) -> None:
        import threading

        from bench.stack import rss_bytes

        self.pid, self.read = pid, rss_bytes
        self.peak = self.last = rss_bytes(pid) if pid else 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if pid:
            self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(OSError):
                self.last = self.read(self.pid)
                self.peak = max(self.peak, self.last)

    def close(self) -> tuple[int, int]:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
            self.last = self.read(self.pid)
            self.peak = max(self.peak, self.last)
        return self.peak, self.last


# --------------------------------------------------------------------------- the parent


def _floats(chunks: list[bytes]) -> array.array:
    out = array.array("d")
    for chunk in chunks:
        out.frombytes(chunk)
    return out


def _ms(values: Any, q: float) -> str:
    v = _pct(values, q)
    return "-" if v != v else f"{v * 1e3:.1f}"


HEADER = (
    f"{'N':>5} {'conn/s':>6} {'conn p50/p99 ms':>15} {'settle s':>8} {'status ev':>9} "
    f"{'RSS/conn KiB':>12} {'msg/s':>5} {'alert p50/p99 ms':>16} {'new_msg p50/p99':>15} "
    f"{'ack p99':>7} {'drops':>5} {'web CPU':>7} {'worker':>6} {'redis':>5} {'clients':>7}"
)


@contextlib.contextmanager
def profiled(pid: int | None, out_dir: str | None, name: str, *, subprocesses: bool = False) -> Any:
    """``py-spy record`` the process (and its children: a prefork worker's pool) for the
    duration of the block (raw collapsed stacks)."""
    if not (pid and out_dir):
        yield
        return
    import shutil
    import signal
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = Path(out_dir) / f"{name}.txt"
    proc = subprocess.Popen(
        [spy, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"]
        + (["--subprocesses"] if subprocesses else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_once(stack: Any, args: argparse.Namespace, n: int) -> dict:
    from bench.stack import cpu_seconds, create_topics, create_users, group_cpu_seconds, rss_bytes

    slow_n = max(0, args.slow_readers)
    users = create_users(stack.app, n + slow_n, prefix="load")
    size = max(1, args.topic_size)
    groups = [list(range(s, min(n, s + size))) for s in range(0, n, size)]
    groups[0] += list(range(n, n + slow_n))  # the slow readers: members of the first topic
    topics = create_topics(stack.app, groups, users)
    slow_specs = [
        ClientSpec(users[i].id, users[i].token, topics[0].topic_id, topics[0].room_id)
        for i in range(n, n + slow_n)
    ]
    specs = []
    for topic in topics:
        for i in topic.members:
            if i >= n:
                continue  # a slow reader: connected by SlowReaders, not by the pool
            u = users[i]
            specs.append(ClientSpec(u.id, u.token, topic.topic_id, topic.room_id))
    procs = max(1, min(args.procs, n))
    pool = ClientPool(stack.url, specs, procs, args.client == "lean")
    web_pid = stack.web_pid or args.web_pid
    redis = stack.redis_client()
    redis_pid = int(redis.info("server")["process_id"])
    row: dict[str, Any] = {"n": n}
    rss = RssSampler(web_pid)
    slow: SlowReaders | None = None
    try:
        pool.call("disconnect_all", timeout=60)  # imports socketio in the children (warm)
        rss0 = rss_bytes(web_pid) if web_pid else None
        t0 = time.time()
        with profiled(web_pid, args.profile, f"connect-{n}"):
            res = pool.call("connect_all", timeout=args.connect_timeout, concurrency=args.conc)
        t1 = time.time()
        connected = sum(r["connected"] for r in res)
        errors: dict[str, int] = {}
        for r in res:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        ctimes = _floats([r["times"] for r in res])
        row.update(
            connected=connected,
            conn_rate=connected / (t1 - t0),
            conn_p50=_pct(ctimes, 0.5),
            conn_p99=_pct(ctimes, 0.99),
            conn_errors=errors,
        )
        joins = pool.call("join_all", timeout=args.connect_timeout, concurrency=args.conc)
        if slow_specs:
            slow = SlowReaders(stack.url, slow_specs)
        join_fail = {k: v for r in joins for k, v in r["failures"].items()}
        row["join_failures"] = join_fail
        from webapp.presence.store import ONLINE

        # Presence must be exact: one online user per connected client (distinct users).
        online = redis.scard(ONLINE) - len(slow_specs)
        row["online"] = online
        # The ramp's user_status_change broadcasts (one per user to every client) can queue up
        # far behind the handshakes: wait until they stop arriving before measuring.
        t_q = time.time()
        last, stable_since = -1, time.monotonic()
        while time.time() - t_q < args.quiesce:
            seen = sum(r["status_events"] for r in pool.call("stats", timeout=60))
            if seen != last:
                last, stable_since = seen, time.monotonic()
            elif time.monotonic() - stable_since >= 2.0:
                break
            time.sleep(0.5)
        row["quiesce_s"] = time.time() - t_q
        row["ramp_status_events"] = last
        if web_pid:
            row["rss_per_conn"] = (rss_bytes(web_pid) - rss0) / max(1, connected)
            row["rss_total"] = rss_bytes(web_pid)

        t_start = time.time() + 1.0
        web_cpu0 = cpu_seconds(web_pid) if web_pid else 0.0
        wrk_cpu0 = sum(group_cpu_seconds(w.pid) for w in stack.workers)
        redis_cpu0 = cpu_seconds(redis_pid)
        with (
            profiled(web_pid, args.profile, f"run-{n}"),
            profiled(pool.procs[0].pid, args.profile, f"client-run-{n}"),
            profiled(
                stack.workers[0].pid if stack.workers else None,
                args.profile,
                f"worker-run-{n}",
                subprocesses=True,
            ),
        ):
            runs = pool.call(
                "run",
                timeout=args.warmup + args.duration + 120,
                t_start=t_start,
                warmup=args.warmup,
                duration=args.duration,
                rate=args.rate / procs,
                tune_gc=args.client_gc == "tuned",
            )
        t_measure = t_start + args.warmup
        wall = time.time() - t_measure
        web_cpu = (cpu_seconds(web_pid) - web_cpu0) / wall if web_pid else float("nan")
        wrk_cpu = (sum(group_cpu_seconds(w.pid) for w in stack.workers) - wrk_cpu0) / wall
        redis_cpu = (cpu_seconds(redis_pid) - redis_cpu0) / wall
        sent = sum(r["sent"] for r in runs)
        acked = sum(r["acks_ok"] for r in runs)
        failed = {k: v for r in runs for k, v in r["acks_failed"].items()}
        members_per_msg = size - 1
        # new_message is emitted before the alert on the same queue and connections keep order,
        # so a client holding every alert also holds every new_message it was going to get.
        drains = pool.call(
            "drain",
            timeout=args.drain + 60,
            expected_alerts=acked,
            expected_news=0,
            wait=args.drain,
        )
        alert_lat = _floats([d["alert_lat"] for d in drains])
        if args.dump:
            import json

            sent_at = _floats([d["alert_sent"] for d in drains])
            per_msg: dict[float, float] = {}
            for t, lat in zip(sent_at, alert_lat, strict=True):
                per_msg[t] = max(per_msg.get(t, 0.0), lat)
            Path(args.dump).write_text(json.dumps(sorted(per_msg.items())))
        alert_out = _floats([d["alert_out"] for d in drains])
        new_lat = _floats([d["new_lat"] for d in drains])
        ack_lat = _floats([d["ack_lat"] for d in drains])
        received = sum(d["alerts"] for d in drains)
        clients = sum(d["clients"] for d in drains)
        news = sum(d["news"] for d in drains)
        row.update(
            sent=sent,
            acked=acked,
            ack_failures=failed,
            msg_rate=sent / args.duration if args.duration else 0.0,
            alert_p50=_pct(alert_lat, 0.5),
            alert_p99=_pct(alert_lat, 0.99),
            alert_max=max(alert_lat) if len(alert_lat) else float("nan"),
            alert_p999=_pct(alert_lat, 0.999),
            alert_out_p50=_pct(alert_out, 0.5),
            alert_out_p99=_pct(alert_out, 0.99),
            new_p50=_pct(new_lat, 0.5),
            new_p99=_pct(new_lat, 0.99),
            ack_p99=_pct(ack_lat, 0.99),
            alert_drops=acked * clients - received,
            new_drops=acked * members_per_msg - news,
            web_cpu=web_cpu,
            worker_cpu=wrk_cpu,
            redis_cpu=redis_cpu,
            client_cpu=sum(r["cpu"] for r in runs) / wall,
            status_events=sum(d["status_events"] for d in drains),
            disconnects=sum(d["disconnects"] for d in drains),
        )
        pool.call("disconnect_all", timeout=120)
    finally:
        if slow is not None:
            row["slow_dropped"] = slow.close()
        row["rss_peak"], row["rss_end"] = rss.close()
        pool.close()
    return row


def format_row(r: dict) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None or v != v else f"{v * 1e3:.0f}"

    def pct(v: float | None) -> str:
        return "-" if v is None or v != v else f"{v * 100:.0f}%"

    rss = r.get("rss_per_conn")
    drops = r.get("alert_drops", 0) + r.get("new_drops", 0)
    return (
        f"{r['n']:>5} {r['conn_rate']:>6.0f} "
        f"{ms(r['conn_p50']) + '/' + ms(r['conn_p99']):>15} "
        f"{r.get('quiesce_s', 0):>8.1f} {r.get('ramp_status_events', 0):>9} "
        f"{'-' if rss is None else f'{rss / 1024:.1f}':>12} {r.get('msg_rate', 0):>5.1f} "
        f"{ms(r.get('alert_p50')) + '/' + ms(r.get('alert_p99')):>16} "
        f"{ms(r.get('new_p50')) + '/' + ms(r.get('new_p99')):>15} "
        f"{ms(r.get('ack_p99')):>7} {drops:>5} "
        f"{pct(r.get('web_cpu')):>7} {pct(r.get('worker_cpu')):>6} "
        f"{pct(r.get('redis_cpu')):>5} {pct(r.get('client_cpu')):>7}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Beacon load harness")
    parser.add_argument("--clients", type=int, default=1000, help="concurrent clients (users)")
    parser.add_argument("--sweep", default=None, help="comma-separated N, one fresh stack each")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured sending seconds")
    parser.add_argument("--drain", type=float, default=15.0, help="max wait for deliveries")
    parser.add_argument("--topic-size", type=int, default=10, help="members per topic")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--conc", type=int, default=50, help="handshakes in flight per process")
    parser.add_argument("--client", default="lean", choices=["lean", "stock"])
    parser.add_argument(
        "--client-gc",
        default="tuned",
        choices=["tuned", "default"],
        help="client processes: freeze their heap before measuring, or CPython's collector",
    )
    parser.add_argument("--connect-timeout", type=float, default=300.0)
    parser.add_argument(
        "--quiesce", type=float, default=120.0, help="max wait for the ramp's broadcasts"
    )
    parser.add_argument("--profile", default=None, help="py-spy the web process into this dir")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--url", default=None, help="target a running Beacon instead")
    parser.add_argument("--web-pid", type=int, default=None, help="its web pid (for RSS/CPU)")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--dump", default=None, help="write [send time, max alert latency]")
    parser.add_argument(
        "--slow-readers", type=int, default=0, help="extra connections that stop reading"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the Beacon processes"
    )
    args = parser.parse_args(argv)

    from bench.stack import beacon_stack, external_stack

    sizes = [int(s) for s in args.sweep.split(",")] if args.sweep else [args.clients]
    print(
        f"rate {args.rate:g} msg/s for {args.duration:g}s (+{args.warmup:g}s warm-up), "
        f"topics of {args.topic_size}, {args.procs} client processes ({args.client} client, "
        f"{args.client_gc} GC), "
        f"cpus {os.cpu_count()}, {args.backend}"
        + (f", env {' '.join(args.env)}" if args.env else ""),
        flush=True,
    )
    print(HEADER, flush=True)
    rows = []
    for n in sizes:
        if args.url:
            ctx = external_stack(args.url)
        else:
            # Every client expects every alert: the broadcast to everyone is what is measured
            # (the default audience, the topic's members, is a small part of that work).
            extra = {"ALERT_AUDIENCE": "everyone", **dict(i.split("=", 1) for i in args.env)}
            ctx = beacon_stack(args.backend, keep_logs=args.keep_logs, extra_env=extra)
        with ctx as stack:
            row = run_once(stack, args, n)
            if args.keep_logs and stack.log_dir:
                print(f"  logs: {stack.log_dir}")
        rows.append(row)
        print(format_row(row), flush=True)
        if row.get("alert_out_p99") is not None:
            print(
                f"  alert p99.9/max {row['alert_p999'] * 1e3:.0f}/{row['alert_max'] * 1e3:.0f} ms;"
                " from the message's created_at (server clock) to the client: p50/p99 "
                f"{row['alert_out_p50'] * 1e3:.0f}/{row['alert_out_p99'] * 1e3:.0f} ms",
                flush=True,
            )
        notes = []
        if row["connected"] != n:
            notes.append(f"connected {row['connected']}/{n} {row['conn_errors']}")
        if row.get("online") != row["connected"]:
            notes.append(f"presence: {row.get('online')} online for {row['connected']} clients")
        if row.get("join_failures"):
            notes.append(f"join failures {row['join_failures']}")
        if row.get("ack_failures"):
            notes.append(f"send refusals {row['ack_failures']}")
        if row.get("alert_drops") or row.get("new_drops"):
            notes.append(
                f"drops: {row['alert_drops']} alerts, {row['new_drops']} new_message "
                f"(sent {row['sent']}, acked {row['acked']})"
            )
        if row.get("rss_peak"):
            print(
                f"  web RSS peak/end {row['rss_peak'] / 2**20:.0f}/{row['rss_end'] / 2**20:.0f} "
                f"MiB; slow readers {args.slow_readers}"
                + (f", dropped by the server {row['slow_dropped']}" if args.slow_readers else ""),
                flush=True,
            )
        if row.get("disconnects"):
            notes.append(f"{row['disconnects']} clients were disconnected")
        for note in notes:
            print(f"  ! {note}", flush=True)
    if len(rows) > 1:
        p99 = statistics.median(r["alert_p99"] for r in rows)
        print(f"median of the runs' alert p99: {p99 * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
