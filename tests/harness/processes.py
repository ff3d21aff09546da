"""Real service processes (web, Celery workers, beat) under test control.

System tests start the same commands ops would run, each in its own process group so that
stopping or killing one also takes down its children (Celery prefork pool, gevent hubs), and
with output captured to a log file whose tail is shown whenever something goes wrong.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .waiting import wait_until


class ProcessDiedError(RuntimeError):
    """The managed process exited while we were waiting for it to become ready."""


def _group_alive(pgid: int) -> bool:
    """True if any non-zombie process is still in process group ``pgid``."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # not Linux: best effort
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." — comm may contain spaces/parens.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


class ManagedProcess:
    """One subprocess in its own process group, stdout+stderr appended to ``<log_dir>/<name>.log``.

    ``env`` is layered over the current environment unless ``inherit_env=False``; use that to
    keep a developer's shell settings out of a test. ``PYTHONUNBUFFERED=1`` is set by default
    so log-based readiness checks see output as soon as it is printed.
    The process starts in the constructor unless ``autostart=False``; ``start()`` after
    ``stop()``/``kill()`` runs the same command again (restart tests), appending to the log.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        inherit_env: bool = True,
        autostart: bool = True,
    ) -> None:
        self.name = name
        self.argv: list[str] = [str(a) for a in argv]
        base: dict[str, str] = dict(os.environ) if inherit_env else {}
        base.setdefault("PYTHONUNBUFFERED", "1")
        base.update(env or {})
        self.env: dict[str, str] = base
        self.cwd: str | None = os.fspath(cwd) if cwd is not None else None
        directory = (
            Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="beacon-"))
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path: Path = directory / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        #: byte offset in the log where the current run's own output starts
        self.run_offset: int = 0
        if autostart:
            self.start()

    # -- state -----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """Process id (also the process group id); raises if never started."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> ManagedProcess:
        """Launch the command (again); the log file is appended to, never truncated."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:
            log.write(f"=== harness: starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.run_offset = log.tell()
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session + process group, pgid == pid
            )
        return self

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself and return its exit code."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the whole group, wait up to ``timeout``, then SIGKILL what is left.

        Returns the leader's exit code. Also waits for the rest of the group (e.g. Celery pool
        children), so nothing keeps holding ports or queues after this returns.
        """
        proc = self._proc
        if proc is None:
            return None
        pgid = proc.pid
        deadline = time.monotonic() + timeout
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None or _group_alive(pgid):
            self._signal_group(signal.SIGKILL)
        return proc.wait()

    def kill(self) -> int | None:
        """SIGKILL the whole group at once: a crash, with no shutdown handlers (fault tests)."""
        proc = self._proc
        if proc is None:
            return None
        self._signal_group(signal.SIGKILL)
        return proc.wait()

    def send_signal(self, sig: int) -> None:
        """Signal the whole process group (e.g. SIGINT to mimic Ctrl-C)."""
        self._signal_group(sig)

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- output ----------------------------------------------------------------------------
    def log_size(self) -> int:
        """Current log length in bytes: pass as ``since=`` to only look at later output."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        """The captured output (from byte offset ``since``)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _describe_failure(self, headline: str) -> str:
        return f"{headline}\n--- last lines of {self.log_path} ---\n{self.log_tail()}\n--- end ---"

    # -- readiness -------------------------------------------------------------------------
    def wait_ready(
        self,
        predicate: Callable[[], Any],
        timeout: float = 30.0,
        interval: float = 0.05,
        what: str = "ready",
    ) -> Any:
        """Poll ``predicate()`` until truthy and return its value.

        Exceptions from the predicate count as "not ready yet" (connection refused while
        booting). Fails fast with :class:`ProcessDiedError` if the process exits, or raises
        ``TimeoutError``; both messages include the tail of the log.
        """
        last_exc: list[BaseException] = []

        def check() -> Any:
            # Sample liveness first: if it was already dead, all its output is in the log, so
            # a last predicate call still sees e.g. a message printed just before exiting.
            dead = not self.alive
            try:
                result = predicate()
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_exc[:] = [exc]
                result = None
            if result:
                return result
            if dead:
                raise ProcessDiedError(
                    self._describe_failure(
                        f"{self.name} exited with code {self.returncode} before it was {what}"
                    )
                )
            return None

        try:
            return wait_until(check, timeout=timeout, interval=interval, message="")
        except TimeoutError:
            detail = f" (last error: {last_exc[0]!r})" if last_exc else ""
            raise TimeoutError(
                self._describe_failure(f"{self.name} was not {what} within {timeout:.1f}s{detail}")
            ) from None

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self._proc is not None else "not started"
        if self._proc is not None and not self.alive:
            state += f", exited {self.returncode}"
        return f"<ManagedProcess {self.name} {state}>"


def wait_http_ok(
    url: str,
    timeout: float = 30.0,
    proc: ManagedProcess | None = None,
    *,
    request_timeout: float = 2.0,
) -> Any:
    """Poll ``GET url`` until it answers 2xx/3xx; return the ``requests.Response``.

    Pass ``proc`` to fail fast (with its log tail) if the server process dies while booting.
    """
    import requests

    def ok() -> Any:
        response = requests.get(url, timeout=request_timeout)
        return response if response.ok else None

    if proc is not None:
        return proc.wait_ready(ok, timeout=timeout, what=f"answering {url}")
    return wait_until(
        ok,
        timeout=timeout,
        interval=0.05,
        message=f"GET {url} did not succeed",
        ignore_exceptions=(requests.RequestException,),
    )


def wait_log_contains(
    proc: ManagedProcess,
    text: str,
    timeout: float = 30.0,
    *,
    since: int | None = None,
) -> str:
    """Wait until ``text`` appears in the process output and return the matching line.

    Searches from byte offset ``since`` (see ``log_size()``); by default from the start of the
    current run, so earlier runs and the harness's own banner (which quotes the command line)
    never match. Fails fast if the process exits first.
    """
    offset = proc.run_offset if since is None else since

    def found() -> str | None:
        for line in proc.log_text(offset).splitlines():
            if text in line:
                return line
        return None

    result: str = proc.wait_ready(found, timeout=timeout, what=f"logging {text!r}")
    return result
