"""A mail server for tests: real SMTP (aiosmtpd) in its own process, writing to a Maildir.

Why: the email channel's connection handling, STARTTLS, login and its reading of SMTP's
answers can only be trusted against a server that speaks the protocol over a real socket, and
crash tests need one they can hold mid-send. A message is written to the Maildir (one file,
renamed into ``new/`` whole) only once its DATA is complete and accepted, with ``Return-Path``,
one ``Delivered-To`` per envelope recipient and ``X-Sink-Received`` (nanoseconds, for order)
put in front of it.

``python -m tests.fakes.smtp --port P --maildir DIR [--control-port C] [--tls-cert F
--tls-key F] [--require-auth USER:PASS]``: with a certificate it offers STARTTLS; with
``--require-auth`` it wants AUTH (over TLS when it has a certificate) before MAIL.

Control API (JSON over plain HTTP on the control port): ``GET /health``; ``GET /stats``
(``connections`` since the last reset, ``stalled``: DATA replies held now); ``POST /refuse``
``{"address", "code", "text", "times"}`` (RCPT for that address answers ``code text``, the next
``times`` times, null: until reset); ``POST /stall`` ``{"seconds"}`` (from now on the reply to
the end of DATA is held, before anything is stored, until ``/release`` or for ``seconds``, null:
no limit; a held message whose time is up is accepted); ``POST /release`` ``{"accept"}`` (stop
stalling; held messages are accepted and stored, as a server that already had all of them
would, even when their client has gone; or, with ``accept`` false, answered 451 and dropped);
``POST /reset`` (no refusals, no stall (held messages dropped), counters zero, Maildir empty).

Tests use ``running_smtp_sink(folder)``: it starts the process and yields an ``SmtpSink``
with the settings Beacon needs (``env()``) and the messages it stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.policy
import json
import mailbox
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.harness.certs import make_certs
from tests.harness.ports import free_port
from tests.harness.processes import ManagedProcess
from tests.harness.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
HOLD_POLL = 0.02  # seconds between looks at a held message's fate


# -- the server ------------------------------------------------------------------------------
@dataclass
class _Refusal:
    code: int
    text: str
    times: int | None  # None: until reset


@dataclass
class _Held:
    """One DATA reply held in stall mode; ``accept`` is None until it is decided."""

    deadline: float
    accept: bool | None = None


@dataclass
class SinkState:
    """What the control thread and the SMTP loop share (under ``lock``)."""

    maildir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    refusals: dict[str, _Refusal] = field(default_factory=dict)
    stall_seconds: float | None = None
    stalling: bool = False
    held: list[_Held] = field(default_factory=list)
    connections: int = 0

    def refusal(self, address: str) -> _Refusal | None:
        with self.lock:
            refusal = self.refusals.get(address.lower())
            if refusal is not None and refusal.times is not None:
                refusal.times -= 1
                if refusal.times <= 0:
                    del self.refusals[address.lower()]
            return refusal

    def hold(self) -> _Held | None:
        with self.lock:
            if not self.stalling:
                return None
            limit = self.stall_seconds
            held = _Held(time.monotonic() + (limit if limit is not None else float("inf")))
            self.held.append(held)
            return held

    def unhold(self, held: _Held) -> None:
        with self.lock:
            if held in self.held:
                self.held.remove(held)

    def release(self, accept: bool) -> None:
        with self.lock:
            self.stalling = False
            for held in self.held:
                held.accept = accept
            self.held.clear()

    def reset(self) -> None:
        self.release(accept=False)
        with self.lock:
            self.refusals.clear()
            self.connections = 0
        box = mailbox.Maildir(self.maildir, create=True)
        for key in box.keys():
            box.discard(key)

    def store(self, envelope: Any) -> None:
        """The message as received, after the envelope's headers, with the local line ends
        a Maildir has (one file, written whole)."""
        lines = [f"Return-Path: <{envelope.mail_from}>"]
        lines += [f"Delivered-To: {rcpt}" for rcpt in envelope.rcpt_tos]
        lines.append(f"X-Sink-Received: {time.time_ns()}")
        content = "\n".join(lines).encode() + b"\n" + envelope.original_content
        mailbox.Maildir(self.maildir, create=True).add(content.replace(b"\r\n", b"\n"))


class SinkHandler:
    """aiosmtpd hooks: scripted RCPT refusals, and DATA held in stall mode."""

    def __init__(self, state: SinkState) -> None:
        self.state = state
        self._finishing: set[asyncio.Task[str]] = set()

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.state.refusal(address)
        if refusal is not None:
            return f"{refusal.code} {refusal.text}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        # Shielded: a held message's fate is decided even when its client goes away
        # (aiosmtpd cancels the session's handler then), as on a real server.
        task = asyncio.ensure_future(self._finish(envelope))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return await asyncio.shield(task)

    async def _finish(self, envelope: Any) -> str:
        held = self.state.hold()
        if held is not None:
            while held.accept is None and time.monotonic() < held.deadline:
                await asyncio.sleep(HOLD_POLL)
            self.state.unhold(held)
            if held.accept is False:
                return "451 4.3.0 Released without accepting the message"
        self.state.store(envelope)
        return "250 2.0.0 OK: queued"


def _control_handler(state: SinkState) -> type[BaseHTTPRequestHandler]:
    class Control(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass  # quiet: tests poll it

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/health":
                self._answer(200, {"ok": True})
            elif self.path == "/stats":
                with state.lock:
                    stats = {"connections": state.connections, "stalled": len(state.held)}
                self._answer(200, stats)
            else:
                self._answer(404, {"error": "not_found"})

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/refuse":
                refusal = _Refusal(int(body["code"]), str(body["text"]), body.get("times"))
                with state.lock:
                    state.refusals[str(body["address"]).lower()] = refusal
            elif self.path == "/stall":
                with state.lock:
                    state.stalling = True
                    state.stall_seconds = body.get("seconds")
            elif self.path == "/release":
                state.release(accept=bool(body.get("accept", True)))
            elif self.path == "/reset":
                state.reset()
            else:
                self._answer(404, {"error": "not_found"})
                return
            self._answer(200, {"ok": True})

    return Control


def main(argv: list[str] | None = None) -> int:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--control-port", type=int)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--require-auth", metavar="USER:PASS")
    args = parser.parse_args(argv)

    state = SinkState(Path(args.maildir))
    mailbox.Maildir(state.maildir, create=True)
    options: dict[str, Any] = {}
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        options["tls_context"] = tls
    if args.require_auth:
        user, _, password = args.require_auth.partition(":")
        expected = LoginPassword(user.encode(), password.encode())

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
        ) -> AuthResult:
            return AuthResult(success=auth_data == expected, handled=False)

        options.update(
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=bool(args.tls_cert),
        )

    class CountingController(Controller):
        def factory(self) -> SMTP:
            with state.lock:
                state.connections += 1
            return super().factory()

    controller = CountingController(
        SinkHandler(state), hostname=args.host, port=args.port, **options
    )
    controller.start()
    with state.lock:
        state.connections = 0  # the controller's own readiness probe
    print(f"smtp sink listening on {args.host}:{args.port}, writing {args.maildir}", flush=True)
    if args.control_port is None:
        threading.Event().wait()
    server = ThreadingHTTPServer((args.host, args.control_port), _control_handler(state))
    print(f"smtp sink control on http://{args.host}:{args.control_port}", flush=True)
    server.serve_forever()
    return 0


# -- the test helper -------------------------------------------------------------------------
class SmtpSink:
    """A running sink: its address, the settings Beacon needs, what it stored, its controls."""

    def __init__(
        self,
        process: ManagedProcess,
        *,
        port: int,
        control_port: int,
        maildir: Path,
        ca_file: Path | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.process = process
        self.host = "127.0.0.1"
        self.port = port
        self.maildir = maildir
        self.ca_file = ca_file
        self.auth = auth
        self.link_secret = secrets.token_urlsafe(32)
        self._http = httpx.Client(
            base_url=f"http://127.0.0.1:{control_port}", timeout=10.0, trust_env=False
        )

    def env(self) -> dict[str, str]:
        """SMTP_* and EMAIL_* for a Beacon process that sends here (with the CA to trust and
        STARTTLS when the sink has a certificate, the login when it wants one)."""
        env = {
            "SMTP_HOST": self.host,
            "SMTP_PORT": str(self.port),
            "EMAIL_FROM": "Beacon <beacon@localhost>",
            "EMAIL_LINK_SECRET": self.link_secret,
        }
        if self.ca_file is not None:
            ca = str(self.ca_file)
            env.update(
                SMTP_STARTTLS="1", REQUESTS_CA_BUNDLE=ca, CURL_CA_BUNDLE=ca, SSL_CERT_FILE=ca
            )
        if self.auth is not None:
            env.update(SMTP_USERNAME=self.auth[0], SMTP_PASSWORD=self.auth[1])
        return env

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"smtp sink {method} {path}: {response.status_code}")
        return response.json()

    def healthy(self) -> bool:
        return bool(self._call("GET", "/health").get("ok"))

    # -- what it stored ------------------------------------------------------------------------
    def messages(self, to: str | None = None) -> list[EmailMessage]:
        """Stored messages, oldest first; ``to``: only those with that envelope recipient
        (``Delivered-To``, any case)."""
        box = mailbox.Maildir(self.maildir, create=True)
        parser = BytesParser(_class=EmailMessage, policy=email.policy.default)
        found: list[EmailMessage] = []
        for key in box.keys():
            with contextlib.suppress(KeyError):  # removed meanwhile (clear)
                found.append(parser.parsebytes(box.get_bytes(key)))
        if to is not None:
            found = [
                m
                for m in found
                if to.lower() in (str(v).lower() for v in m.get_all("Delivered-To", []))
            ]
        found.sort(key=lambda m: int(str(m["X-Sink-Received"])))
        return found

    def wait_for(
        self, count: int, to: str | None = None, timeout: float = 20.0
    ) -> list[EmailMessage]:
        """The stored messages (``to`` as in ``messages``) once there are at least ``count``
        (one or more)."""

        def enough() -> list[EmailMessage] | None:
            found = self.messages(to)
            return found if len(found) >= count else None

        where = f" to {to}" if to else ""
        return wait_until(
            enough, timeout=timeout, message=f"the sink did not store {count} message(s){where}"
        )

    # -- controls ------------------------------------------------------------------------------
    def refuse(
        self, address: str, code: int = 550, text: str | None = None, *, times: int | None = None
    ) -> None:
        """RCPT for ``address`` answers ``code text``, the next ``times`` times (None: until
        ``clear``)."""
        if text is None:
            text = "5.1.1 No such user here" if code >= 500 else "4.2.1 Mailbox busy, try later"
        self._call(
            "POST", "/refuse", {"address": address, "code": code, "text": text, "times": times}
        )

    def stall(self, seconds: float | None = None) -> None:
        """Hold the reply to the end of every DATA from now on, before storing, until
        ``release`` (or for ``seconds``, then accept)."""
        self._call("POST", "/stall", {"seconds": seconds})

    def release(self, accept: bool = True) -> None:
        """Stop stalling: held messages are stored and accepted (``accept`` false: answered
        451, not stored), whether or not their client is still there."""
        self._call("POST", "/release", {"accept": accept})

    def stalled(self) -> int:
        """How many DATA replies are held now."""
        return int(self._call("GET", "/stats")["stalled"])

    def connections(self) -> int:
        """SMTP connections since the start or the last ``clear``."""
        return int(self._call("GET", "/stats")["connections"])

    def clear(self) -> None:
        """No refusals, no stall (held messages dropped), counters zero, Maildir empty."""
        self._call("POST", "/reset")

    def close(self) -> None:
        self._http.close()
        self.process.stop()


@contextlib.contextmanager
def running_smtp_sink(
    folder: Path,
    *,
    tls: bool = False,
    auth: tuple[str, str] | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[SmtpSink]:
    """The sink in a child process on free ports, its Maildir and log in ``folder``; yields
    its client. ``tls``: a throwaway CA and certificate, STARTTLS offered; ``auth``: (user,
    password) the sink requires before MAIL."""
    folder.mkdir(parents=True, exist_ok=True)
    maildir = folder / "maildir"
    port, control_port = free_port(), free_port()
    argv = [sys.executable, "-m", "tests.fakes.smtp", "--port", str(port)]
    argv += ["--maildir", str(maildir), "--control-port", str(control_port)]
    ca_file = None
    if tls:
        certs = make_certs(folder)
        argv += ["--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])]
        ca_file = certs["ca"]
    if auth is not None:
        argv += ["--require-auth", f"{auth[0]}:{auth[1]}"]
    process = ManagedProcess("smtp-sink", argv, cwd=REPO_ROOT, log_dir=folder)
    sink = SmtpSink(
        process, port=port, control_port=control_port, maildir=maildir, ca_file=ca_file, auth=auth
    )
    try:
        process.wait_ready(sink.healthy, timeout=startup_timeout, what="answering /health")
        yield sink
    finally:
        sink.close()


if __name__ == "__main__":
    sys.exit(main())
