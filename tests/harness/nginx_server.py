"""A real nginx running the shipped site file, ``deploy/nginx/beacon.conf``, on loopback.

The site file is used as shipped except for what must differ on a test machine, each replaced
by exact text (``SUBSTITUTIONS``; a fragment the file no longer contains fails loudly, so an edit
to the file cannot leave the test exercising something else): the listen ports, the
certificate, the static root, the log files, the ACME webroot and the two upstream servers.
Whole-line comments are dropped first, so comments may mention those values freely.

The top-level ``nginx.conf`` (events, the ``http`` block with mime types, temp paths, pid, error
log) is written here, with the ``http`` settings of Debian's ``/etc/nginx/nginx.conf``, which
includes the site file in production. Everything lives in a temp dir of its own. As root, the
workers run as root too: the checkout (static files) and the temp dir need not be readable by an
unprivileged user on a test machine; production keeps Debian's ``user www-data``. As another
user, there is no ``user`` directive (nginx would warn that it ignores it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .ports import free_port
from .processes import ManagedProcess
from .waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SITE_CONF = ROOT / "deploy" / "nginx" / "beacon.conf"
MIME_TYPES = Path("/etc/nginx/mime.types")

# The upstream servers as the site file lists them, in order.
SHIPPED_UPSTREAMS = ("127.0.0.1:8001", "127.0.0.1:8002")


def nginx_binary() -> str | None:
    """``nginx`` on PATH, or Debian's /usr/sbin/nginx (not on a non-root PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class AccessEntry:
    """One line of the site's access log (its ``beacon`` log_format)."""

    remote_addr: str
    method: str
    uri: str
    status: int
    #: every backend tried, in order ("127.0.0.1:P"); empty when nginx answered itself
    upstreams: tuple[str, ...]
    transport: str | None
    sid: str | None

    @property
    def upstream(self) -> str | None:
        """The backend that answered (the last one tried)."""
        return self.upstreams[-1] if self.upstreams else None


_ACCESS_LINE = re.compile(
    r'^(?P<remote>\S+) \[[^\]]*\] "(?P<method>\S+) (?P<uri>.*) (?P<protocol>\S+)" '
    r"(?P<status>\d+) \d+ rt=\S+ upstream=(?P<upstream>.*?) ustatus=.*? "
    r'transport=(?P<transport>\S*) sid=(?P<sid>\S*) ".*"$'
)


def _dash(value: str) -> str | None:
    return None if value in ("", "-") else value


class NginxServer:
    """nginx with ``deploy/nginx/beacon.conf`` in front of ``upstreams`` ("127.0.0.1:P", one
    per server line of the file), TLS with ``cert``/``key``, static files from ``static_root``
    (the directory that holds ``static/``). ``https_url``/``http_url``; ``access_log()``."""

    def __init__(
        self,
        upstreams: tuple[str, ...] | list[str],
        cert: Path,
        key: Path,
        *,
        static_root: Path = ROOT / "webapp",
        site_conf: Path = SITE_CONF,
        start_timeout: float = 10.0,
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx not found (Debian: apt-get install nginx)")
        if len(upstreams) != len(SHIPPED_UPSTREAMS):
            raise ValueError(f"the site file has {len(SHIPPED_UPSTREAMS)} upstream servers")
        self.binary = binary
        self.upstreams = tuple(upstreams)
        self.http_port = free_port()
        self.https_port = free_port()
        while self.https_port == self.http_port:
            self.https_port = free_port()
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="beacon-nginx-"))
        self.site_path = self.dir / "beacon.conf"
        self.conf_path = self.dir / "nginx.conf"
        self.error_log = self.dir / "error.log"
        self.access_log_path = self.dir / "beacon.access.log"
        (self.dir / "acme").mkdir()
        (self.dir / "temp").mkdir()  # nginx creates the directories in it, not it
        ipv6 = _ipv6_loopback()
        self.substitutions = {
            "listen 80;": f"listen 127.0.0.1:{self.http_port};",
            "listen [::]:80;": f"listen [::1]:{self.http_port};" if ipv6 else "",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{self.https_port} ssl http2;",
            "listen [::]:443 ssl http2;": (
                f"listen [::1]:{self.https_port} ssl http2;" if ipv6 else ""
            ),
            "/etc/beacon/tls/fullchain.pem;": f"{cert};",
            "/etc/beacon/tls/privkey.pem;": f"{key};",
            "root /opt/beacon/webapp;": f"root {static_root};",
            "root /var/www/letsencrypt;": f"root {self.dir / 'acme'};",
            "/var/log/nginx/beacon.access.log ": f"{self.access_log_path} ",
            "/var/log/nginx/beacon.error.log;": f"{self.dir / 'beacon.error.log'};",
            **{
                f"server {shipped} ": f"server {mine} "
                for shipped, mine in zip(SHIPPED_UPSTREAMS, self.upstreams, strict=True)
            },
        }
        self.site_path.write_text(self.site_text(site_conf.read_text()))
        self.conf_path.write_text(self._main_conf())
        self._proc: ManagedProcess | None = None

    # -- configuration ---------------------------------------------------------------------
    def site_text(self, shipped: str) -> str:
        """The shipped site file with whole-line comments dropped and each substitution made
        (every fragment must occur exactly once)."""
        text = re.sub(r"(?m)^[ \t]*#.*\n", "", shipped)
        for fragment, replacement in self.substitutions.items():
            count = text.count(fragment)
            if count != 1:
                raise RuntimeError(
                    f"deploy/nginx/beacon.conf contains {fragment!r} {count} times, not once: "
                    "update tests/harness/nginx_server.py to the file"
                )
            text = text.replace(fragment, replacement)
        return text

    def _main_conf(self) -> str:
        temp = self.dir / "temp"
        temp_paths = "\n".join(
            f"    {kind}_temp_path {temp / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root root;\n" if os.geteuid() == 0 else ""
        # The http block's settings are Debian's /etc/nginx/nginx.conf (which includes
        # sites-enabled/*), so the site runs in the context it gets in production.
        return (
            f"{user}worker_processes 1;\n"
            f"pid {self.dir / 'nginx.pid'};\n"
            f"error_log {self.error_log} info;\n"
            "events {\n    worker_connections 768;\n}\n"
            "http {\n"
            "    sendfile on;\n"
            "    tcp_nopush on;\n"
            "    types_hash_max_size 2048;\n"
            f"    include {MIME_TYPES};\n"
            "    default_type application/octet-stream;\n"
            "    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;\n"
            "    ssl_prefer_server_ciphers on;\n"
            f"    access_log {self.dir / 'access.log'};\n"
            "    gzip on;\n"
            f"{temp_paths}\n"
            f"    include {self.site_path};\n"
            "}\n"
        )

    def _argv(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            str(self.dir),
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log),
            *extra,
        ]

    def check_config(self) -> str:
        """``nginx -t`` on the configuration (what an operator runs before a reload); raises
        with its output when it fails, returns the output otherwise."""
        result = subprocess.run(
            self._argv("-t"), capture_output=True, text=True, timeout=30, check=False
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            numbered = "\n".join(
                f"{n:4} {line}" for n, line in enumerate(self.site_path.read_text().split("\n"), 1)
            )
            raise RuntimeError(f"nginx -t failed:\n{output}\n--- {self.site_path}:\n{numbered}")
        return output

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive

    def start(self) -> NginxServer:
        """Check the configuration, start nginx in the foreground (its own process group),
        wait until both ports accept connections."""
        self.check_config()
        self._proc = ManagedProcess(
            "nginx", self._argv("-g", "daemon off;"), cwd=self.dir, log_dir=self.dir
        )

        def accepting() -> bool:
            if not self._proc or not self._proc.alive:
                raise RuntimeError(f"nginx exited:\n{self.error_log_text()}")
            for port in (self.http_port, self.https_port):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    return False
            return True

        wait_until(accepting, timeout=self.start_timeout, message="nginx did not listen")
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGTERM: open WebSockets are closed, not waited for)."""
        if self._proc is not None:
            self._proc.stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NginxServer:
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

    # -- logs ------------------------------------------------------------------------------
    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def access_log(self) -> list[AccessEntry]:
        """The site's access log so far (a request is logged when it ends: a WebSocket when
        it closes)."""
        try:
            lines = self.access_log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            match = _ACCESS_LINE.match(line)
            if match is None:
                raise ValueError(f"access log line not in the beacon format: {line!r}")
            upstream = _dash(match["upstream"])
            entries.append(
                AccessEntry(
                    remote_addr=match["remote"],
                    method=match["method"],
                    uri=match["uri"],
                    status=int(match["status"]),
                    upstreams=tuple(re.split(r",\s*|\s+:\s+", upstream)) if upstream else (),
                    transport=_dash(match["transport"]),
                    sid=_dash(match["sid"]),
                )
            )
        return entries
