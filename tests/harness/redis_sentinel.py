"""A Redis primary, a replica and three ``redis-sentinel`` processes on loopback, for failover
tests: ``kill_primary()`` crashes the primary, the sentinels agree it is down and promote the
replica, and ``primary()`` says where the primary is now (asking a sentinel, as clients do).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .ports import free_port
from .processes import ManagedProcess
from .redis_server import RedisServer, _encode_command
from .waiting import wait_until


class SentinelCluster:
    """``primary`` and ``replica`` (``RedisServer``s) watched by three sentinels under
    ``master``; the sentinels call it down after ``down_after_ms`` without an answer."""

    QUORUM = 2

    def __init__(self, master: str = "beacon", *, down_after_ms: int = 1000) -> None:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RuntimeError(
                "redis-sentinel not found on PATH (Debian: apt-get install redis-sentinel)"
            )
        self.binary = binary
        self.master = master
        self.down_after_ms = down_after_ms
        self.dir = Path(tempfile.mkdtemp(prefix="beacon-sentinel-"))
        self.primary = RedisServer(extra_args=["--repl-diskless-sync-delay", "0"])  # sync now
        self.replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.sentinel_ports = [free_port() for _ in range(3)]
        # Each sentinel is told its own id and the others' (and the replica) in its config,
        # rather than left to find them through the primary's hello channel and INFO: they
        # agree at once, and a failover does not wait on discovery.
        self._ids = {port: secrets.token_hex(20) for port in self.sentinel_ports}
        self._sentinels: list[ManagedProcess] = []

    # -- settings for Beacon ----------------------------------------------------------------
    @property
    def sentinels(self) -> str:
        """``REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def env(self, db: int = 0) -> dict[str, str]:
        """The settings that put a Beacon process on this cluster (REDIS_URL's host unused)."""
        return {
            "REDIS_URL": f"redis://sentinel-managed/{db}",
            "REDIS_SENTINELS": self.sentinels,
            "REDIS_SENTINEL_MASTER": self.master,
        }

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> SentinelCluster:
        self.primary.start()
        self.replica.start()
        wait_until(
            lambda: b"master_link_status:up" in self._info(self.replica.port, "replication"),
            timeout=15,
            message="the replica never synchronised with the primary",
        )
        for port in self.sentinel_ports:
            self._start_sentinel(port)
        try:
            wait_until(
                lambda: all(self._sentinel_knows_everyone(port) for port in self.sentinel_ports),
                timeout=30,
                message="the sentinels do not know each other and the replica",
            )
        except TimeoutError as exc:
            states = {port: self._master_fields(port) for port in self.sentinel_ports}
            alive = [proc.alive for proc in self._sentinels]
            raise TimeoutError(f"{exc}: {states}, alive {alive}\n{self.log_tail()}") from None
        return self

    def _start_sentinel(self, port: int) -> None:
        conf = self.dir / f"sentinel-{port}.conf"  # sentinel rewrites its own config file
        conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {self.master} 127.0.0.1 {self.primary.port} {self.QUORUM}\n"
            f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master} 10000\n"
            f"sentinel parallel-syncs {self.master} 1\n"
            f"sentinel myid {self._ids[port]}\n"
            f"sentinel known-replica {self.master} 127.0.0.1 {self.replica.port}\n"
            + "".join(
                f"sentinel known-sentinel {self.master} 127.0.0.1 {other} {self._ids[other]}\n"
                for other in self.sentinel_ports
                if other != port
            )
        )
        self._sentinels.append(
            ManagedProcess(
                f"sentinel-{port}", [self.binary, str(conf)], cwd=self.dir, log_dir=self.dir
            )
        )

    def _master_fields(self, port: int) -> dict[bytes, bytes]:
        """The sentinel's SENTINEL MASTER fields ({} if it does not answer)."""
        try:
            reply = self._raw(port, "SENTINEL", "MASTER", self.master)
        except OSError:
            return {}
        # the flat reply's name/value lines
        lines = reply.split(b"\r\n")
        return {lines[i]: lines[i + 2] for i in range(2, len(lines) - 2, 4)}

    def _sentinel_knows_everyone(self, port: int) -> bool:
        fields = self._master_fields(port)
        return fields.get(b"num-slaves") == b"1" and fields.get(b"num-other-sentinels") == b"2"

    def kill_primary(self) -> None:
        """Crash the primary (SIGKILL): its unreplicated writes are gone with it."""
        self.primary.kill()

    def primary_port(self) -> int | None:
        """The primary's port as the first answering sentinel reports it."""
        for port in self.sentinel_ports:
            try:
                reply = self._raw(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
            except OSError:
                continue
            lines = reply.split(b"\r\n")
            if len(lines) >= 5 and lines[0] == b"*2":
                return int(lines[4])
        return None

    def wait_promoted(self, timeout: float = 30.0) -> float:
        """Wait until the sentinels name the replica as primary and it accepts writes;
        returns the monotonic time it was seen."""
        wait_until(
            lambda: (
                self.primary_port() == self.replica.port
                and b"role:master" in self._info(self.replica.port, "replication")
            ),
            timeout=timeout,
            interval=0.05,
            message="Sentinel did not promote the replica",
        )
        return time.monotonic()

    def close(self) -> None:
        for proc in self._sentinels:
            proc.stop()
        self.replica.close()
        self.primary.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(lines)}" for p in self._sentinels)

    # -- raw RESP (the harness does not depend on the client library under test) ------------
    def _raw(self, port: int, *args: str, timeout: float = 1.0) -> bytes:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_encode_command(*args))
            sock.settimeout(timeout)
            buf = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if _complete(buf):
                    return buf
            raise TimeoutError(f"incomplete reply from port {port}: {buf[:200]!r}")

    def _info(self, port: int, section: str) -> bytes:
        try:
            return self._raw(port, "INFO", section)
        except OSError:
            return b""


def _complete(buf: bytes) -> bool:
    """Whether ``buf`` holds one whole RESP reply (enough for INFO and SENTINEL replies)."""
    try:
        return _parse(buf, 0) is not None
    except (ValueError, IndexError):
        return False


def _parse(buf: bytes, pos: int) -> int | None:
    """The position after the reply starting at ``pos``, or None while incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, head = buf[pos : pos + 1], buf[pos + 1 : end]
    if kind in (b"+", b"-", b":"):
        return end + 2
    if kind == b"$":
        size = int(head)
        if size < 0:
            return end + 2
        return end + 2 + size + 2 if len(buf) >= end + 2 + size + 2 else None
    if kind == b"*":
        count, nxt = int(head), end + 2
        for _ in range(max(count, 0)):
            nxt = _parse(buf, nxt)
            if nxt is None:
                return None
        return nxt
    raise ValueError(f"unexpected RESP type {kind!r}")
