"""Self-tests of tests/harness: the tools the system tests rely on must themselves be right.

These never import webapp/workers, so they keep passing while the application changes.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from tests.harness.ports import free_port
from tests.harness.postgres_server import PostgresServer
from tests.harness.processes import (
    ManagedProcess,
    ProcessDiedError,
    wait_http_ok,
    wait_log_contains,
)
from tests.harness.redis_server import RedisServer
from tests.harness.sio_client import RecordingClient
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


# -- waiting / ports ---------------------------------------------------------------------------
def test_wait_until_returns_the_truthy_value() -> None:
    calls = []

    def predicate() -> str | None:
        calls.append(1)
        return "done" if len(calls) >= 3 else None

    assert wait_until(predicate, timeout=5, interval=0.001) == "done"
    assert len(calls) == 3


def test_wait_until_timeout_raises_with_message() -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="the sky did not fall"):
        wait_until(lambda: False, timeout=0.2, message="the sky did not fall")
    assert time.monotonic() - start < 5


def test_wait_until_can_ignore_exceptions_and_reports_the_last() -> None:
    def boom() -> bool:
        raise ConnectionRefusedError("nope")

    with pytest.raises(TimeoutError, match="nope"):
        wait_until(boom, timeout=0.1, ignore_exceptions=(ConnectionError,))
    with pytest.raises(ValueError, match="invalid literal"):
        wait_until(lambda: int("x"), timeout=0.1)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- Redis -------------------------------------------------------------------------------------
def test_redis_start_stop_restart_same_port() -> None:
    with RedisServer() as redis:
        assert redis.ping()
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        client = redis.client()
        client.set("k", "v")
        assert client.get("k") == b"v"
        config = client.config_get("maxmemory-policy")
        assert config["maxmemory-policy"] == "noeviction"
        redis.flushall()
        assert client.get("k") is None

        port = redis.port
        redis.stop()
        assert not redis.alive
        assert not redis.ping()
        redis.start()
        assert redis.port == port
        assert redis.ping()

        client.set("k2", "v2")
        redis.kill()
        assert not redis.ping()
        redis.start()
        # persistence is off: a crash loses everything, as the tests expect
        assert redis.client().get("k2") is None
    assert not redis.alive
    assert not redis.dir.exists()


# -- PostgreSQL --------------------------------------------------------------------------------
@pytest.mark.skipif(not PostgresServer.available(), reason=str(PostgresServer.unavailable_reason()))
def test_postgres_create_database_and_select() -> None:
    import psycopg
    import sqlalchemy

    with PostgresServer() as pg:
        url = pg.create_database("harness_selftest")
        assert url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/harness_selftest"
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sqlalchemy.text("select 1")).scalar() == 1
                conn.execute(sqlalchemy.text("create table t (x int)"))
                conn.commit()
        finally:
            engine.dispose()
        # Re-creating gives an empty database even with a connection still open.
        held = psycopg.connect(pg.dsn("harness_selftest"), autocommit=True)
        try:
            pg.create_database("harness_selftest")
        finally:
            held.close()
        with psycopg.connect(pg.dsn("harness_selftest")) as conn:
            tables = conn.execute("select count(*) from pg_tables where tablename = 't'").fetchone()
            assert tables == (0,)
    assert not pg.running
    assert not pg.root.exists()


# -- processes ---------------------------------------------------------------------------------
def test_managed_process_readiness_timeout_includes_log_tail(tmp_path: Path) -> None:
    code = "import time; print('booting slowly', flush=True); time.sleep(60)"
    proc = ManagedProcess("slow", [sys.executable, "-c", code], log_dir=tmp_path)
    try:
        wait_log_contains(proc, "booting slowly", timeout=10)
        with pytest.raises(TimeoutError) as excinfo:
            proc.wait_ready(lambda: False, timeout=0.3)
        assert "booting slowly" in str(excinfo.value)
        assert "slow" in str(excinfo.value)
    finally:
        proc.stop(timeout=5)
    assert not proc.alive


def test_managed_process_death_fails_fast_with_log(tmp_path: Path) -> None:
    code = "import sys; print('fatal: bad config', flush=True); sys.exit(3)"
    proc = ManagedProcess("crash", [sys.executable, "-c", code], log_dir=tmp_path)
    start = time.monotonic()
    with pytest.raises(ProcessDiedError, match="fatal: bad config"):
        proc.wait_ready(lambda: False, timeout=30)
    assert time.monotonic() - start < 10
    assert proc.returncode == 3
    # output printed right before exiting is still found
    assert "bad config" in wait_log_contains(proc, "fatal", timeout=5)


def test_managed_process_stop_takes_down_the_group(tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = ManagedProcess("parent", [sys.executable, "-c", code], log_dir=tmp_path)
    wait_log_contains(proc, "ready", timeout=10)
    child_pid = int(child_pid_file.read_text())
    proc.stop(timeout=5)
    assert not proc.alive

    def child_gone() -> bool:
        try:
            stat = Path(f"/proc/{child_pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat[stat.rfind(")") + 2] == "Z"

    wait_until(child_gone, timeout=5, message="child of the stopped process is still running")

    # restart appends to the same log
    proc.start()
    wait_until(lambda: proc.log_text().count("=== harness: starting parent") == 2, timeout=5)
    proc.kill()
    assert not proc.alive


_SIO_SERVER = """
from gevent import monkey
monkey.patch_all()
import sys
from urllib.parse import parse_qs
import socketio
from gevent import pywsgi

sio = socketio.Server(async_mode="gevent")

@sio.event
def connect(sid, environ, auth):
    token = (auth or {}).get("token")
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header.startswith("Bearer "):
        token = header[7:]
    token = token or parse_qs(environ.get("QUERY_STRING", "")).get("token", [None])[0]
    if token != "good":
        raise socketio.exceptions.ConnectionRefusedError("unauthorized")
    sio.emit("hello", {"n": 1}, to=sid)

@sio.on("echo")
def echo(sid, data):
    sio.emit("echoed", data, to=sid)
    return {"ok": True, "data": data}

try:  # engine.io uses gevent-websocket when installed, which needs its handler class
    from geventwebsocket.handler import WebSocketHandler
    handler = {"handler_class": WebSocketHandler}
except ImportError:  # otherwise simple-websocket, with the plain gevent handler
    handler = {}

port = int(sys.argv[1])
print("serving on", port, flush=True)
app = socketio.WSGIApp(sio)
pywsgi.WSGIServer(("127.0.0.1", port), app, log=None, **handler).serve_forever()
"""


@pytest.fixture
def sio_server(tmp_path: Path):
    script = tmp_path / "sio_server.py"
    script.write_text(_SIO_SERVER)
    port = free_port()
    proc = ManagedProcess("sio-server", [sys.executable, str(script), str(port)], log_dir=tmp_path)
    try:
        wait_http_ok(
            f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling", timeout=20, proc=proc
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop(timeout=5)


@pytest.mark.parametrize("auth_mode", ["auth", "header", "query"])
def test_recording_client_auth_modes_events_and_acks(sio_server: str, auth_mode: str) -> None:
    client = RecordingClient()
    client.connect(sio_server, "good", auth_mode=auth_mode)  # type: ignore[arg-type]
    try:
        assert client.connected
        assert client.wait_for_event("hello") == {"n": 1}
        mark = client.mark()
        ack = client.call("echo", {"x": 1})
        assert ack == {"ok": True, "data": {"x": 1}}
        assert client.wait_for_event("echoed", lambda p: p["x"] == 1, after=mark) == {"x": 1}
        client.emit("echo", {"x": 2})
        client.wait_for_event("echoed", lambda p: p["x"] == 2)
        assert client.events("echoed") == [{"x": 1}, {"x": 2}]
        client.assert_no_event("echoed", lambda p: p["x"] == 3)
        with pytest.raises(AssertionError):
            client.assert_no_event("echoed", after=mark)
        with pytest.raises(TimeoutError, match="echoed"):
            client.wait_for_event("echoed", lambda p: p["x"] == 3, timeout=0.2)
    finally:
        client.disconnect()
    assert not client.connected
    assert client.events("disconnect")


@pytest.mark.parametrize("token", ["bad", None])
def test_recording_client_refused_connection(sio_server: str, token: str | None) -> None:
    client = RecordingClient()
    ok, error = client.try_connect(sio_server, token)
    assert not ok
    assert error == {"message": "unauthorized"}
    assert not client.connected
    ok, error = client.try_connect(sio_server, "good")
    assert ok
    assert error is None
    client.disconnect()


def test_recording_client_websocket_transport(sio_server: str) -> None:
    with RecordingClient(transports=["websocket"]) as client:
        client.connect(sio_server, "good")
        assert client.transport == "websocket"
        assert client.call("echo", [1, 2]) == {"ok": True, "data": [1, 2]}
        client.wait_for_event("echoed")
