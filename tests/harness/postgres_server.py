"""A throwaway PostgreSQL cluster for tests that must prove behaviour on the production database.

SQLite hides concurrency, locking and dialect differences (upserts, timestamptz, bulk updates),
so the PostgreSQL variants of the tests run against a real, private cluster: trust auth,
loopback only, durability off for speed. PostgreSQL refuses to run as root, so when the tests
run as root the cluster is owned by and run as the ``postgres`` user (via ``runuser``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from .ports import free_port

_RUN_AS = "postgres"
_BINARIES = ("initdb", "pg_ctl", "postgres")
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _find_bindir() -> Path | None:
    """Directory holding initdb/pg_ctl/postgres: PATH first, then Debian's versioned dirs."""
    found = [shutil.which(name) for name in _BINARIES]
    if all(found):
        return Path(found[0]).parent  # type: ignore[arg-type]
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p)],
        reverse=True,
    )
    for cand in candidates:
        if all(os.access(os.path.join(cand, name), os.X_OK) for name in _BINARIES):
            return Path(cand)
    return None


def _is_root() -> bool:
    return os.geteuid() == 0


class PostgresServer:
    """A private PostgreSQL cluster in a temp dir, listening on 127.0.0.1:<free port>."""

    def __init__(
        self,
        port: int | None = None,
        *,
        base_dir: str | None = None,
        start_timeout: int = 60,
    ) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        bindir = _find_bindir()
        assert bindir is not None
        self.bindir: Path = bindir
        self.host: str = "127.0.0.1"
        self.port: int = port if port is not None else free_port()
        self.start_timeout = start_timeout
        # Not pytest's tmp_path: that is mode 0700 under root's tree and the postgres user
        # could not reach it.
        self.root: Path = Path(tempfile.mkdtemp(prefix="beacon-pg-", dir=base_dir))
        self.data_dir: Path = self.root / "data"
        self.socket_dir: Path = self.root / "sock"
        self.log_path: Path = self.root / "postgres.log"
        self._initialized = False
        self._running = False
        self._prepare_dirs()

    # -- availability ----------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why a cluster cannot be started here, or None when it can (use as a skip reason)."""
        if _find_bindir() is None:
            return (
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH "
                "or in /usr/lib/postgresql/*/bin"
            )
        if _is_root():
            if shutil.which("runuser") is None:
                return "running as root but `runuser` is missing (needed to run as postgres)"
            try:
                pwd.getpwnam(_RUN_AS)
            except KeyError:
                return f"running as root but there is no {_RUN_AS!r} user to run PostgreSQL"
        return None

    @classmethod
    def available(cls) -> bool:
        """True when initdb/pg_ctl/postgres exist (and, as root, the postgres user does)."""
        return cls.unavailable_reason() is None

    # -- helpers ---------------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        self.socket_dir.mkdir()
        if _is_root():
            user = pwd.getpwnam(_RUN_AS)
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(self.root, 0o755)
            os.chmod(self.socket_dir, 0o755)
            # Every ancestor must be traversable by the postgres user.
            check = subprocess.run(
                ["runuser", "-u", _RUN_AS, "--", "test", "-w", str(self.root)],
                check=False,
            )
            if check.returncode != 0:
                shutil.rmtree(self.root, ignore_errors=True)
                raise RuntimeError(
                    f"user {_RUN_AS!r} cannot write {self.root}; pass base_dir= a directory "
                    "whose parents are world-searchable (e.g. /tmp)"
                )

    def _run(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        if _is_root():
            argv = ["runuser", "-u", _RUN_AS, "--", *argv]
        env = dict(os.environ)
        env.update({"LC_ALL": "C", "LANG": "C", "PGTZ": "UTC", "TZ": "UTC"})
        env.pop("PGDATA", None)
        result = subprocess.run(
            argv,
            cwd=self.root,  # must be readable by the postgres user
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{self.log_tail()}"
            )
        return result

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> PostgresServer:
        """initdb on first use, then start the cluster and wait until it accepts connections."""
        if self._running:
            return self
        if not self._initialized:
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                timeout=120,
            )
            self._initialized = True
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {shlex.quote(str(self.socket_dir))}",
                "-c listen_addresses=127.0.0.1",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        try:
            self._run(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(self.start_timeout),
                    "start",
                ],
                timeout=self.start_timeout + 30,
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            # A half-started postmaster would outlive the test run; take it down.
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(
                    [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"],
                    timeout=30,
                )
            raise
        self._running = True
        return self

    def stop(self) -> None:
        """Fast shutdown: disconnect clients, roll back, stop (``pg_ctl stop -m fast``)."""
        if not self._running:
            return
        self._run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            timeout=60,
        )
        self._running = False

    def close(self) -> None:
        """Stop the cluster and delete its files."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- databases -------------------------------------------------------------------------
    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``dbname`` on this cluster."""
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq connection string for ``dbname`` (for psycopg.connect)."""
        return f"host={self.host} port={self.port} user=postgres dbname={dbname}"

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """(Re)create an empty database and return its SQLAlchemy URL.

        An existing database of that name is dropped first (forcibly, even with open
        connections), so each test can start from a clean schema. ``template`` copies another
        database of this cluster instead (e.g. one already migrated; nobody may be connected
        to it), which is much faster than running the migrations again.
        """
        if not _DB_NAME.match(name) or (template is not None and not _DB_NAME.match(template)):
            raise ValueError(f"invalid database name {name!r} / template {template!r}")
        if not self._running:
            raise RuntimeError("PostgresServer is not running; call start() first")
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            if template is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            else:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
        return self.url(name)

    def restart(self) -> None:
        """Stop (fast) and start again on the same port and data directory: an outage."""
        self.stop()
        self.start()

    def drop_database(self, name: str) -> None:
        """Drop a database created by :meth:`create_database` (no error if absent)."""
        if not _DB_NAME.match(name):
            raise ValueError(f"invalid database name {name!r}")
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the server log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no postgres log>"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<PostgresServer {self.host}:{self.port} {state}>"
