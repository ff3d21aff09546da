"""The shared HTTP/2 client of the push channels (webapp/platform/outbound/http2.py), against
the fake APNs in its own process (HTTP/2 over TLS, hypercorn) as a plain HTTP/2 server.

Many requests on one connection from several threads; a slow stream that does not hold up the
others; a request given up at its deadline, without holding up the others and never sent
after it; the cap on streams on the wire; a lost connection tried once more (and only once);
``again`` replacing a request from a worker thread; a forked child with its own connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.apns import FakeApns, running_fake_apns
from tests.harness.certs import make_certs
from tests.harness.waiting import wait_until
from webapp.delivery.channels.apns.token import ProviderToken, load_key
from webapp.platform.outbound.http2 import Answer, Failure, Http2Client, Request

pytestmark = pytest.mark.timeout(60)

BODY = b'{"aps":{"alert":"hello"}}'
MakeClient = Callable[..., Http2Client]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApns]:
    with running_fake_apns(tmp_path_factory.mktemp("apns")) as fake:
        yield fake


@pytest.fixture(scope="module")
def provider(fake: FakeApns) -> str:
    key = load_key(Path(fake.key_file).read_bytes())
    return ProviderToken(key, fake.key_id, fake.team_id).get()


@pytest.fixture
def make_client(fake: FakeApns) -> Iterator[MakeClient]:
    fake.reset()
    made: list[Http2Client] = []

    def make(**overrides: object) -> Http2Client:
        options: dict[str, object] = {
            "name": "test",
            "timeout": 10.0,
            "concurrency": 16,
            "tls": ssl.create_default_context(cafile=fake.ca_file),
            "user_agent": "beacon-test/1",
            **overrides,
        }
        client = Http2Client(**options)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def device() -> str:
    return secrets.token_hex(32)


def push(fake: FakeApns, provider: str, token: str | None = None) -> Request:
    """A request the fake accepts (200) unless a script for its device token says otherwise."""
    headers = {
        "apns-topic": fake.topic,
        "apns-push-type": "alert",
        "authorization": f"bearer {provider}",
    }
    return Request(f"https://{fake.host}/3/device/{token or device()}", headers, BODY)


def token_of(request: Request) -> str:
    return request.url.rsplit("/", 1)[1]


def statuses(answers: list[Answer | Failure]) -> list[int | str]:
    return [a.status if isinstance(a, Answer) else a.kind for a in answers]


# -- multiplexing ------------------------------------------------------------------------------
def test_requests_from_several_threads_share_one_connection(
    fake: FakeApns, provider: str, make_client: MakeClient
) -> None:
    client = make_client(concurrency=40)
    requests = [push(fake, provider) for _ in range(40)]
    for request in requests:
        fake.script(token_of(request), 200, delay=0.3)
    results: list[list[int | str]] = []

    def batch(part: list[Request]) -> None:
        results.append(statuses(client.exchange_all(part)))

    started = time.monotonic()
    threads = [threading.Thread(target=batch, args=(requests[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert results == [[200] * 10] * 4
    assert elapsed < 40 * 0.3 / 4  # concurrent, not one after the other
    stats = fake.stats()
    assert (stats["connections"], stats["streams"]) == (1, 40)


def test_a_slow_stream_does_not_delay_the_others(
    fake: FakeApns, provider: str, make_client: MakeClient
) -> None:
    """One stream answered 3 s late; 19 requests sent meanwhile on the same connection are all
    answered at once (the bound here is generous)."""
    client = make_client()
    slow = push(fake, provider)
    fake.script(token_of(slow), 200, delay=3.0)
    assert statuses(client.exchange_all([push(fake, provider)])) == [200]  # connection open
    late: list[list[int | str]] = []
    waiting = threading.Thread(target=lambda: late.append(statuses(client.exchange_all([slow]))))
    waiting.start()
    wait_until(lambda: fake.attempts(token_of(slow)), timeout=5, message="slow one not sent")
    started = time.monotonic()
    answers = client.exchange_all([push(fake, provider) for _ in range(19)])
    elapsed = time.monotonic() - started
    assert statuses(answers) == [200] * 19
    assert elapsed < 1.0
    assert waiting.is_alive()  # the slow answer was still to come
    waiting.join(10)
    assert late == [[200]]
    assert fake.stats()["connections"] == 1


# -- deadlines ---------------------------------------------------------------------------------
def test_a_request_past_its_deadline_fails_without_holding_up_the_others(
    fake: FakeApns, provider: str, make_client: MakeClient
) -> None:
    client = make_client(timeout=1.0)
    slow = push(fake, provider)
    fake.script(token_of(slow), 200, delay=5.0)
    started = time.monotonic()
    answers = client.exchange_all([slow] + [push(fake, provider) for _ in range(9)])
    elapsed = time.monotonic() - started
    assert statuses(answers) == ["deadline passed"] + [200] * 9
    assert 1.0 <= elapsed < 2.5
    # Given up on, the request still waits on the wire until the connection has been silent
    # for a whole timeout; then it ends, and the next request goes out on a new connection.
    wait_until(lambda: client.in_flight() == 0, timeout=5, message="still waiting")
    assert statuses(client.exchange_all([push(fake, provider)])) == [200]


def test_a_request_waiting_for_a_stream_is_never_sent_after_its_deadline(
    fake: FakeApns, provider: str, make_client: MakeClient
) -> None:
    client = make_client(timeout=1.0, max_streams=1)
    slow, queued = push(fake, provider), push(fake, provider)
    fake.script(token_of(slow), 200, delay=3.0)
    answers = client.exchange_all([slow, queued])
    assert statuses(answers) == ["deadline passed", "deadline passed"]
    wait_until(lambda: client.in_flight() == 0, timeout=5, message="still waiting")
    assert statuses(client.exchange_all([push(fake, provider)])) == [200]
    assert fake.attempts(token_of(queued)) == []


def test_streams_on_the_wire_are_capped(
    fake: FakeApns, provider: str, make_client: MakeClient
) -> None:
    client = make_client(concurrency=20, max_streams=5)
    requests = [push(fake, provider) for _ in range(20)]
    for request in requests:
        fake.script(token_of(request), 200, delay=0.2)
    started = time.monotonic()
    assert statuses(client.exchange_all(requests)) == [200] * 20
    elapsed = time.monotonic() - started
    assert 4 * 0.2 <= elapsed < 3.0  # four rounds of five


# -- lost connections --------------------------------------------------------------------------
@pytest.mark.parametrize("crash", [True, False], ids=["killed", "stopped"])
def test_a_lost_connection_is_tried_once_more_on_a_new_one(
    fake: FakeApns,
    provider: str,
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
    crash: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="webapp.platform.outbound.http2")
    client = make_client()
    assert statuses(client.exchange_all([push(fake, provider)])) == [200]
    fake.restart(crash=crash)  # the idle connection drops (or gets a GOAWAY), unnoticed
    request = push(fake, provider)
    assert statuses(client.exchange_all([request])) == [200]
    assert len(fake.attempts(token_of(request))) == 1  # the restarted fake starts empty
    assert "connection lost" in caplog.text
    assert request.url not in caplog.text


@contextlib.contextmanager
def dropping_server(folder: Path) -> Iterator[tuple[int, list[int], ssl.SSLContext]]:
    """A TLS server (ALPN h2) that closes each connection once the client has written to it;
    yields its port, the connections it took, and a client context that trusts it."""
    certs = make_certs(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    taken: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            taken.append(1)
            with contextlib.suppress(OSError), conn:
                conn.settimeout(5)
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)  # the connection preface, at least

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], taken, ssl.create_default_context(cafile=certs["ca"])
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        thread.join(5)


def test_a_connection_lost_twice_is_a_failure(tmp_path: Path, make_client: MakeClient) -> None:
    with dropping_server(tmp_path) as (port, taken, trust):
        client = make_client(tls=trust)
        request = Request(f"https://127.0.0.1:{port}/3/device/{device()}", {}, BODY)
        [answer] = client.exchange_all([request])
        assert isinstance(answer, Failure)
        assert answer.kind in {"RemoteProtocolError", "ReadError", "WriteError"}
        assert len(taken) == 2


# -- again -------------------------------------------------------------------------------------
def test_again_sends_a_replacement_once(
    fake: FakeApns, provider: str, make_client: MakeClient
) -> None:
    client = make_client()
    calls: list[tuple[str, int]] = []

    def again(request: Request, answer: Answer) -> Request | None:
        calls.append((threading.current_thread().name, answer.status))
        if request.headers["authorization"] == "bearer forged":
            return request._replace(headers={**request.headers, "authorization": "bearer worse"})
        return None

    fine, forged = push(fake, provider), push(fake, "forged")
    assert statuses(client.exchange_all([fine, forged], again=again)) == [200, 403]
    assert [status for _, status in calls] == [403]  # not after a 2xx, nor after a replacement
    assert calls[0][0].startswith("http2-again")  # off the loop thread
    attempts = fake.attempts(token_of(forged))
    assert [(a["status"], a["reason"]) for a in attempts] == [(403, "InvalidProviderToken")] * 2

    def mend(request: Request, answer: Answer) -> Request | None:
        return request._replace(headers={**request.headers, "authorization": f"bearer {provider}"})

    assert statuses(client.exchange_all([push(fake, "forged")], again=mend)) == [200]


def test_a_blocking_again_does_not_hold_up_other_requests(
    fake: FakeApns, provider: str, make_client: MakeClient
) -> None:
    client = make_client()
    entered, release = threading.Event(), threading.Event()

    def again(request: Request, answer: Answer) -> Request | None:
        entered.set()
        release.wait(10)  # a token refresh, say
        return request._replace(headers={**request.headers, "authorization": f"bearer {provider}"})

    results: list[list[int | str]] = []
    thread = threading.Thread(
        target=lambda: results.append(
            statuses(client.exchange_all([push(fake, "forged")], again=again))
        )
    )
    thread.start()
    try:
        assert entered.wait(5)
        started = time.monotonic()
        assert statuses(client.exchange_all([push(fake, provider) for _ in range(5)])) == [200] * 5
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        thread.join(10)
    assert results == [[200]]


def test_a_replacement_ready_after_the_deadline_is_not_sent(
    fake: FakeApns, provider: str, make_client: MakeClient
) -> None:
    client = make_client(timeout=1.0)
    release, returned = threading.Event(), threading.Event()

    def again(request: Request, answer: Answer) -> Request | None:
        release.wait(10)
        returned.set()
        return request._replace(headers={**request.headers, "authorization": f"bearer {provider}"})

    late = push(fake, "forged")
    assert statuses(client.exchange_all([late], again=again)) == ["deadline passed"]
    release.set()
    assert returned.wait(5)
    assert statuses(client.exchange_all([push(fake, provider)])) == [200]  # after the loop ran
    assert [a["status"] for a in fake.attempts(token_of(late))] == [403]


# -- processes ---------------------------------------------------------------------------------
def test_a_forked_child_opens_its_own_connection(
    fake: FakeApns, provider: str, make_client: MakeClient
) -> None:
    client = make_client()
    assert statuses(client.exchange_all([push(fake, provider)])) == [200]
    pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread is not here
        code = 1
        try:
            answers = client.exchange_all([push(fake, provider)])
            code = 0 if statuses(answers) == [200] else 2
        finally:
            os._exit(code)

    def reaped() -> tuple[int] | None:
        done, status = os.waitpid(pid, os.WNOHANG)
        return (os.waitstatus_to_exitcode(status),) if done else None

    try:
        (code,) = wait_until(reaped, timeout=20, message="the child did not finish")
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    assert code == 0
    assert statuses(client.exchange_all([push(fake, provider)])) == [200]
    stats = fake.stats()
    assert (stats["connections"], stats["streams"]) == (2, 3)
