"""The HTTP/2 client of the push channels (APNs, FCM): many requests multiplexed over one
long-lived TLS connection, each bounded by its own deadline, from any thread or greenlet.

Why: Apple and Google both want many concurrent requests on few long-lived HTTP/2 connections
(to Apple, a connection per push looks like a denial-of-service attack). So a channel holds one
``Http2Client`` per process: one ``httpx.AsyncClient`` (HTTP/2 only) driven by an event-loop
thread of its own, to which ``exchange_all`` hands a batch from the caller's thread. Not
``httpx.Client`` shared by threads: httpcore's sync HTTP/2 does not lock its h2 state (threads
interleave stream ids and HPACK state, and the server drops the connection), and a thread
waiting for its answer blocks on the socket holding the read lock, so one slow stream holds up
every other answer. On one loop, whichever stream reads hands each frame to its stream at
once. Under gevent the loop thread is a greenlet and its waits are gevent's.

Deadlines: a request has ``timeout`` seconds from when it gets one of its batch's
``concurrency`` slots; then it is answered ``Failure("deadline passed")`` and left to end by
itself (cancelling it could leave httpcore's count of open streams behind h2's,
encode/httpcore#1022). httpx's own timeouts are each the whole ``timeout``, never the time a
request has left: one read timeout fails every stream of the connection, so it must mean "the
connection said nothing for a whole timeout", not "this request's time is up". At most
``max_streams`` requests are on the wire (httpcore's cap per connection is 100, and a request
over it waits inside httpcore, out of reach of its deadline, to go out after it was given up);
the others wait for a stream within their deadlines. A connection lost before the answer (a
GOAWAY, a drop noticed only on use) costs one more try on a new connection within the same
deadline (the server may have acted on the first: a duplicate is possible).

``again(request, answer)`` runs in a worker thread (it may block: a token refresh) after each
answer that is not a 2xx, and may return one replacement, sent within the same deadline.

Every client of a process shares one loop thread: in a gevent worker all threads are greenlets
of one OS thread, and asyncio allows one running loop per OS thread (a second loop thread fails
with "Cannot run the event loop while another loop is running"). A forked child starts its own
loop and connections, never touching the parent's. A failure's
``kind`` is ``deadline passed`` or an exception's class name, never its text (which may hold
the URL, so a device token).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NamedTuple, TypeVar

import h2.exceptions
import httpx

from webapp.platform.outbound.http import ca_bundle

DEADLINE_PASSED = "deadline passed"
MAX_ANSWER_BYTES = 64 * 1024  # of an answer's body; the rest is not read
MAX_STREAMS = 100  # requests on the wire at once (httpcore's cap per connection)
AGAIN_THREADS = 8  # worker threads for ``again`` callbacks
# Failures of a connection that was already open: a new one may well work at once.
_CONNECTION_LOST = (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError)

log = logging.getLogger(__name__)
# httpx logs each request's URL at INFO: an APNs URL holds the device token.
logging.getLogger("httpx").setLevel(logging.WARNING)
_T = TypeVar("_T")


class Request(NamedTuple):
    """A POST: the URL, its headers (besides the client's user agent), its body."""

    url: str
    headers: dict[str, str]
    body: bytes


class Answer(NamedTuple):
    status: int
    body: bytes  # at most MAX_ANSWER_BYTES
    retry_after: str | None  # the Retry-After header as sent
    phrase: str  # the status's reason phrase


class Failure(NamedTuple):
    """No answer: ``deadline passed`` or the failure's class name (``ConnectError``...)."""

    kind: str


Again = Callable[[Request, Answer], Request | None]

_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def shared_loop() -> asyncio.AbstractEventLoop:
    """The process's loop thread, started on first use (again in a forked child), with its
    ``again`` worker threads; it runs until the process ends."""
    global _loop, _loop_pid
    loop = _loop
    if loop is not None and _loop_pid == os.getpid():
        return loop
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid():
            loop = asyncio.new_event_loop()
            loop.set_default_executor(
                ThreadPoolExecutor(AGAIN_THREADS, thread_name_prefix="http2-again")
            )
            threading.Thread(target=loop.run_forever, name="http2-loop", daemon=True).start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


class Http2Client:
    """POSTs over HTTP/2 to one service; thread-safe (concurrent ``exchange_all`` calls share
    the connection) and fork-safe. ``close`` closes its connections (a later call opens them
    again)."""

    def __init__(
        self,
        *,
        name: str,
        timeout: float,
        concurrency: int,
        tls: ssl.SSLContext | None = None,
        max_connections: int = 4,
        keepalive: float = 300.0,
        max_streams: int = MAX_STREAMS,
        user_agent: str,
    ) -> None:
        if not (0 < timeout < math.inf):
            raise ValueError("a finite positive timeout is required: hanging requests pile up")
        self.name = name
        self.timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))
        # Verified against the deployment's bundle; httpcore offers ALPN h2 on it.
        self._tls = tls if tls is not None else ssl.create_default_context(cafile=ca_bundle())
        self._max_connections = max(1, int(max_connections))
        self._keepalive = float(keepalive)
        self._max_streams = max(1, int(max_streams))
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # Loop-thread state, made there: the httpx client, the streams, requests left running.
        self._client: httpx.AsyncClient | None = None
        self._streams: asyncio.Semaphore | None = None
        self._running: set[asyncio.Future[Any]] = set()
        self._in_flight = 0

    # -- public API ----------------------------------------------------------------------------
    def exchange_all(
        self, requests: Sequence[Request], *, again: Again | None = None
    ) -> list[Answer | Failure]:
        """One answer or failure per request, in order; at most ``concurrency`` of them in
        flight, each given up at its deadline (``Failure("deadline passed")``)."""
        if not requests:
            return []
        # Every request ends by its deadline; the margin only guards against a dead loop.
        rounds = -(-len(requests) // self.concurrency)
        limit = rounds * self.timeout + 30.0
        try:
            return self._call(self._exchange_all(list(requests), again), limit)
        except FutureTimeout:
            log.error("%s: a batch did not finish within %.0f s", self.name, limit)
            return [Failure(DEADLINE_PASSED)] * len(requests)

    def in_flight(self) -> int:
        """Requests on the wire now, those given up but still running included."""
        return self._in_flight

    def close(self) -> None:
        """Close the connections (not the process's loop, which other clients share)."""
        with self._lock:
            client, self._client, self._streams = self._client, None, None
            inherited = self._pid != os.getpid()
        if client is None or inherited:
            return  # nothing opened, or the parent's (its loop is not in this process)
        try:
            asyncio.run_coroutine_threadsafe(client.aclose(), shared_loop()).result(10.0)
        except Exception:  # noqa: BLE001 - closing what may already be broken
            log.debug("%s: client did not close cleanly", self.name, exc_info=True)

    def __enter__(self) -> Http2Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the loop thread -----------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run ``coro`` on the loop thread (started on first use) and wait for its result."""
        loop = self._start()
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # A forked child: the parent's connection is left alone, never used here.
                    self._client = None
                    self._streams = None
                    self._running = set()
                    self._in_flight = 0
                    self._pid = os.getpid()
        return shared_loop()

    def _http(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The client and the streams, made in the loop thread (they belong to its loop)."""
        if self._client is None or self._streams is None:
            self._client = httpx.AsyncClient(
                http1=False,  # HTTP/2 only: never one connection per request in flight
                http2=True,
                verify=self._tls,
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(
                    max_connections=self._max_connections,
                    max_keepalive_connections=self._max_connections,
                    keepalive_expiry=self._keepalive,
                ),
                trust_env=False,  # no proxy, no .netrc: straight to the service
                follow_redirects=False,
                # identity: the body is read raw, up to a limit, never inflated
                headers={"user-agent": self._user_agent, "accept-encoding": "identity"},
            )
            self._streams = asyncio.Semaphore(self._max_streams)
        return self._client, self._streams

    # -- exchanging (in the loop thread) -------------------------------------------------------
    async def _exchange_all(
        self, requests: list[Request], again: Again | None
    ) -> list[Answer | Failure]:
        slots = asyncio.Semaphore(self.concurrency)
        return list(await asyncio.gather(*(self._bounded(r, slots, again) for r in requests)))

    async def _bounded(
        self, request: Request, slots: asyncio.Semaphore, again: Again | None
    ) -> Answer | Failure:
        """One request within its deadline. One still running then is answered ``deadline
        passed`` and left to end by itself (httpx's timeouts bound each of its waits)."""
        await slots.acquire()
        released = False

        def release(_: object = None) -> None:
            nonlocal released
            if not released:
                released = True
                slots.release()

        deadline = time.monotonic() + self.timeout
        task = asyncio.ensure_future(self._one(request, deadline, again))
        task.add_done_callback(release)
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if task in done:
            try:
                return task.result()
            except Exception as exc:  # a bug must not lose the rest of the batch
                log.exception("%s: request failed", self.name)
                return Failure(type(exc).__name__)
        release()
        self._running.add(task)  # referenced until it ends
        task.add_done_callback(self._ended)
        return Failure(DEADLINE_PASSED)

    def _ended(self, task: asyncio.Future[Any]) -> None:
        """A request given up on has ended: forget it, and collect its result so that asyncio
        does not warn."""
        self._running.discard(task)
        if not task.cancelled():
            task.exception()

    async def _one(
        self, request: Request, deadline: float, again: Again | None
    ) -> Answer | Failure:
        """The request, and once more its replacement if ``again`` gives one."""
        answer = await self._exchange(request, deadline)
        if again is None or isinstance(answer, Failure) or 200 <= answer.status < 300:
            return answer
        try:
            loop = asyncio.get_running_loop()
            replacement = await loop.run_in_executor(None, again, request, answer)
        except Exception:  # a bug there must not lose the answer
            log.exception("%s: the again callback failed", self.name)
            return answer
        if replacement is None:
            return answer
        return await self._exchange(replacement, deadline)

    async def _exchange(self, request: Request, deadline: float) -> Answer | Failure:
        """One POST and its answer, once more on a new connection if this one was lost."""
        client, streams = self._http()
        for attempt in (1, 2):
            left = deadline - time.monotonic()
            if left <= 0:
                return Failure(DEADLINE_PASSED)
            if streams.locked():
                try:
                    await asyncio.wait_for(streams.acquire(), left)
                except TimeoutError:
                    return Failure(DEADLINE_PASSED)
            else:
                await streams.acquire()  # free: taken at once
            self._in_flight += 1
            try:
                return await self._post(client, request, deadline)
            except httpx.TimeoutException as exc:
                # At or past its deadline this request ran out of time; before it, the
                # connection went silent for a whole timeout under another request.
                past = time.monotonic() >= deadline
                return Failure(DEADLINE_PASSED if past else type(exc).__name__)
            except _CONNECTION_LOST as exc:
                if attempt == 1:
                    log.info(
                        "%s: connection lost (%s); trying a new one", self.name, type(exc).__name__
                    )
                    continue
                return Failure(type(exc).__name__)
            except (httpx.HTTPError, OSError, h2.exceptions.H2Error) as exc:
                return Failure(type(exc).__name__)
            finally:
                self._in_flight -= 1
                streams.release()
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _post(
        client: httpx.AsyncClient, request: Request, deadline: float
    ) -> Answer | Failure:
        async with client.stream(
            "POST", request.url, headers=request.headers, content=request.body
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) >= MAX_ANSWER_BYTES:
                    break
                if time.monotonic() > deadline:
                    return Failure(DEADLINE_PASSED)
            return Answer(
                response.status_code,
                bytes(body[:MAX_ANSWER_BYTES]),
                response.headers.get("retry-after"),
                response.reason_phrase,
            )
