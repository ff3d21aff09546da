"""Fake third-party services (APNs, FCM) run as real processes for tests.

What both fakes share lives here: serving an ASGI app over TLS with HTTP/2 (hypercorn), and
the control client a test drives a running fake with.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import threading
from typing import Any

import httpx

from tests.harness.processes import ManagedProcess


def serve_tls(
    app: Any,
    *,
    name: str,
    host: str,
    port: int,
    certfile: str,
    keyfile: str,
    max_requests: int,
    graceful_timeout: float,
) -> None:
    """Serve ``app`` on ``host:port`` over TLS (ALPN h2, http/1.1) until SIGTERM/SIGINT.

    Connections are kept for long (the real services keep idle ones for minutes); hypercorn
    ends one after ``max_requests`` requests with a GOAWAY. On a signal, idle connections get
    a GOAWAY, and the process exits after ``graceful_timeout`` (asyncio would otherwise wait up
    to 30 s per TLS connection for a close_notify an idle client never sends).
    """
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.certfile = certfile
    config.keyfile = keyfile
    config.alpn_protocols = ["h2", "http/1.1"]
    config.keep_alive_timeout = 600
    config.keep_alive_max_requests = max_requests
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = "-"

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def begin_stop() -> None:
            stop.set()
            loop.call_later(graceful_timeout + 0.5, os._exit, 0)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, begin_stop)
        print(f"{name} listening on https://{host}:{port}", flush=True)
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(run())


class FakeService:
    """A running fake and its control client (thread-safe: httpx), on ``/_control/...``."""

    label = "fake"

    def __init__(self, process: ManagedProcess, *, port: int, ca_file: str) -> None:
        self.process = process
        self.port = port
        self.ca_file = ca_file
        self._http = httpx.Client(
            http2=True,
            verify=ssl.create_default_context(cafile=ca_file),
            base_url=f"https://127.0.0.1:{port}",
            timeout=10.0,
            trust_env=False,
        )
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(
                f"{self.label} {method} {path}: {response.status_code} {response.text}"
            )
        return response.json()

    def healthy(self) -> bool:
        return bool(self._call("GET", "/_control/health").get("ok"))

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.process.wait_ready(self.healthy, timeout=timeout, what="answering /_control/health")

    def restart(self, *, crash: bool = False) -> None:
        """Stop (SIGTERM; ``crash``: SIGKILL, connections drop) and start again on the same
        port, with the same keys; what it recorded (and the tokens it granted) starts empty."""
        with self._lock:
            if crash:
                self.process.kill()
            else:
                self.process.stop()
            self.process.start()
            self.wait_ready()

    def close(self) -> None:
        self._http.close()
        self.process.stop()
