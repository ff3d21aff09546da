"""A private, real ``redis-server`` per test (or session) on a free loopback port.

Tests that prove broker, presence and Socket.IO message-queue behaviour need a real Redis, and
fault tests need to stop, kill and restart it on the *same* port while clients keep the URL.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .ports import free_port
from .waiting import wait_until


def _encode_command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(f"${len(raw)}\r\n".encode() + raw + b"\r\n")
    return b"".join(out)


class RedisServer:
    """A ``redis-server`` child process bound to 127.0.0.1 with persistence off.

    ``noeviction`` matches production (a broker must never drop keys). ``start()`` after
    ``stop()``/``kill()`` reuses the same port, so URLs handed to other processes stay valid.
    """

    DATABASES = 256

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: list[str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found on PATH (Debian: apt-get install redis-server)"
            )
        self.binary: str = binary
        self.host: str = "127.0.0.1"
        self.port: int = port if port is not None else free_port()
        self.extra_args: list[str] = list(extra_args or [])
        self.start_timeout = start_timeout
        self.dir: Path = Path(tempfile.mkdtemp(prefix="beacon-redis-"))
        self.log_path: Path = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_db = 1  # database 0 is ``url``

    # -- addresses -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis://127.0.0.1:P/0`` — the value to put in ``REDIS_URL``."""
        return self.url_for_db(0)

    def url_for_db(self, db: int) -> str:
        """URL for another logical database on the same server (e.g. to separate tests)."""
        return f"redis://{self.host}:{self.port}/{db}"

    def new_db_url(self) -> str:
        """A logical database nobody else got from this server: one per stack or test, so two
        stacks' workers never take each other's tasks. Counted here, on the one server object
        (a counter in a test module can exist twice: pytest's ``conftest`` and
        ``tests.conftest`` are two imports of one file)."""
        if self._next_db >= self.DATABASES:
            raise RuntimeError(f"all {self.DATABASES} Redis databases of this server are used")
        self._next_db += 1
        return self.url_for_db(self._next_db - 1)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True while the server process runs (it may not answer PING yet)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> RedisServer:
        """Start (or restart) the server on ``self.port`` and wait until it answers PING."""
        if self.alive:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        self.dir.mkdir(parents=True, exist_ok=True)  # close() may have removed it
        argv = [
            self.binary,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--databases",
            str(self.DATABASES),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            "",
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        finally:
            log.close()
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {proc.returncode} on port {self.port}:\n"
                    + self.log_tail()
                )
            return self.ping()

        try:
            wait_until(
                ready,
                timeout=self.start_timeout,
                message=f"redis-server on port {self.port} did not answer PING",
            )
        except TimeoutError as exc:
            self.kill()
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM, wait); SIGKILL if it does not exit in ``timeout``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Crash the server (SIGKILL), as a fault test would."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def close(self) -> None:
        """Stop the server and remove its temp directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        if not self.alive:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- talking to it ---------------------------------------------------------------------
    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Send one command over a fresh connection and return the raw first reply line.

        Raw RESP so the harness does not depend on the client library under test.
        """
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(_encode_command(*args))
            buf = b""
            deadline = time.monotonic() + timeout
            while b"\r\n" not in buf:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no reply to {args[0]} from redis on port {self.port}")
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError(f"redis on port {self.port} closed the connection")
                buf += chunk
            return buf.split(b"\r\n", 1)[0]

    def ping(self) -> bool:
        """True when the server answers PING with PONG (False if not reachable)."""
        try:
            return self.command("PING", timeout=1.0) == b"+PONG"
        except OSError:
            return False

    def flushall(self) -> None:
        """Empty every database (between tests sharing one server)."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def client(self, db: int = 0, **kwargs: Any) -> Any:
        """A ``redis.Redis`` client for this server (imported lazily)."""
        import redis

        return redis.Redis(host=self.host, port=self.port, db=db, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the server log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no redis log>"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "alive" if self.alive else "stopped"
        return f"<RedisServer {self.url} {state}>"
