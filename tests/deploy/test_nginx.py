"""deploy/nginx/beacon.conf in a real nginx, TLS with a throwaway CA, in front of two web
processes (TRUSTED_PROXIES=1, as in production).

Clients connect from different loopback addresses (127.0.0.x) so that the source-address hash
spreads them over the two processes; which process each address lands on is read from the
access log ($upstream_addr), and each process's own /metrics counts its connections.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.conftest import selected_backends, shared_services_stack
from tests.harness.certs import make_certs
from tests.harness.nginx_server import AccessEntry, NginxServer, nginx_binary
from tests.harness.sio_client import RecordingClient, bound_client_options, bound_session
from tests.harness.waiting import wait_until

if TYPE_CHECKING:  # imported for annotations only: pytest would try to collect TestUser
    from tests.conftest import Stack, TestUser

pytestmark = pytest.mark.slow

# Per client address; every client below connects at most twice from its own address.
CONNECT_LIMIT = 3
PROBED = [f"127.0.0.{n}" for n in range(2, 42)]
STATIC_APP_JS = Path(__file__).resolve().parents[2] / "webapp" / "static" / "app.js"


@dataclass
class Edge:
    """The stack behind nginx: ``backends`` maps "127.0.0.1:P" to "web"/"web2"; ``addresses``
    maps each backend's name to the probed client addresses that hash to it (unused ones are
    handed out by ``address``)."""

    stack: Stack
    nginx: NginxServer
    ca: Path
    backends: dict[str, str]
    addresses: dict[str, list[str]] = field(default_factory=dict)
    clients: list[RecordingClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nginx.https_url

    def backend_url(self, name: str) -> str:
        return next(f"http://{a}" for a, n in self.backends.items() if n == name)

    def address(self, backend: str) -> str:
        """A client address not used yet whose requests nginx sends to ``backend``."""
        assert self.addresses[backend], f"no client address left for {backend}"
        return self.addresses[backend].pop(0)

    def session(self, ip: str) -> requests.Session:
        return bound_session(ip, self.ca)

    def api(self, user: TestUser, ip: str, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {user.token}", **kw.pop("headers", {})}
        with self.session(ip) as session:
            return session.request(method, self.url + path, headers=headers, timeout=10, **kw)

    def client(self, name: str, ip: str, **kwargs: Any) -> RecordingClient:
        """An unconnected client whose connections (reconnections too) come from ``ip``."""
        client = RecordingClient(name=name, **bound_client_options(ip, self.ca), **kwargs)
        self.clients.append(client)
        return client

    def connect(self, user: TestUser, ip: str, **kwargs: Any) -> RecordingClient:
        transports = kwargs.pop("transports", None)
        client = self.client(f"{user.username}@{ip}", ip, **kwargs)
        return client.connect(self.url, user.token, transports=transports)

    def online(self, user: TestUser, ip: str) -> set[str]:
        """GET /api/users/online through nginx: the user ids Redis counts online."""
        response = self.api(user, ip, "GET", "/api/users/online")
        assert response.status_code == 200, response.text
        return {u["user_id"] for u in response.json()["users"]}

    def connections(self, backend: str) -> int:
        """``beacon_connections`` of one web process, scraped from it directly."""
        text = requests.get(self.backend_url(backend) + "/metrics", timeout=10).text
        match = re.search(r"^beacon_connections (\S+)$", text, re.MULTILINE)
        return int(float(match.group(1))) if match else 0

    def upstreams_of(self, ip: str, *, sid: str | None = None) -> set[str]:
        """The backends that answered requests from ``ip`` (of one Engine.IO session)."""
        return {
            self.backends[e.upstream]
            for e in self.nginx.access_log()
            if e.remote_addr == ip and e.upstream and (sid is None or e.sid == sid)
        }

    def log_until(self, done: Callable[[list[AccessEntry]], bool], what: str) -> list[AccessEntry]:
        """The access log once ``done(log)`` holds: nginx logs a request just after it has
        answered it (a WebSocket when it closes)."""

        def ready() -> list[AccessEntry] | None:
            log = self.nginx.access_log()
            return log if log and done(log) else None

        return wait_until(ready, message=f"{what} was not logged")

    def close_clients(self) -> None:
        for client in self.clients:
            client.disconnect()
        self.clients.clear()


def _probe(edge: Edge) -> None:
    """Which backend each candidate address hashes to (GET /healthz from each)."""
    for ip in PROBED:
        with edge.session(ip) as session:
            assert session.get(edge.url + "/healthz", timeout=10).status_code == 200
    entries = edge.log_until(
        lambda log: set(PROBED) <= {e.remote_addr for e in log if e.uri == "/healthz"},
        "every probe",
    )
    by_ip = {e.remote_addr: e.upstream for e in entries if e.uri == "/healthz"}
    for ip in PROBED:
        edge.addresses.setdefault(edge.backends[by_ip[ip]], []).append(ip)
    counts = {name: len(edge.addresses.get(name, [])) for name in edge.backends.values()}
    assert min(counts.values()) >= 6, f"the address hash is lopsided: {counts}"


@pytest.fixture(scope="module")
def _edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if nginx_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is required in CI (.ci/run installs it)")
        pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
    # One backend is enough: nothing here depends on the database.
    backend = selected_backends(request.config)[0]
    with shared_services_stack(
        request,
        backend,
        f"beacon_nginx_{backend}",
        name=f"nginx-{backend}",
        workers={"unread": ("unread",)},
        TRUSTED_PROXIES="1",
        DEV_LOGIN="0",
        RATE_LIMIT_CONNECT_IP=f"{CONNECT_LIMIT}/60s",
    ) as stack:
        second = stack.start_web("web2")
        certs = make_certs(tmp_path_factory.mktemp("nginx-tls"))
        upstreams = [stack.url.removeprefix("http://"), second.removeprefix("http://")]
        with NginxServer(upstreams, certs["cert"], certs["key"]) as nginx:
            names = dict(zip(upstreams, ["web", "web2"], strict=True))
            edge = Edge(stack, nginx, certs["ca"], names)
            _probe(edge)
            try:
                yield edge
            finally:
                edge.close_clients()


@pytest.fixture
def edge(_edge: Edge) -> Iterator[Edge]:
    yield _edge
    _edge.close_clients()


def _tls(edge: Edge, alpn: list[str]) -> tuple[str | None, str | None]:
    context = ssl.create_default_context(cafile=str(edge.ca))
    context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", edge.nginx.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version(), tls.selected_alpn_protocol()


def test_tls_redirect_static_files_private_paths_and_body_limits(edge: Edge) -> None:
    nginx, ip = edge.nginx, edge.address("web")
    assert "test is successful" in nginx.check_config()
    # TLS 1.3 with HTTP/2 for browsers; HTTP/1.1 (WebSocket clients) still offered.
    assert _tls(edge, ["h2", "http/1.1"]) == ("TLSv1.3", "h2")
    assert _tls(edge, ["http/1.1"]) == ("TLSv1.3", "http/1.1")

    with edge.session(ip) as session:
        # Plain HTTP: a redirect to the same path over HTTPS, except certbot's challenges.
        plain = session.get(nginx.http_url + "/api/users/me?x=1", allow_redirects=False)
        assert plain.status_code == 301
        assert plain.headers["Location"] == "https://127.0.0.1/api/users/me?x=1"
        challenge = nginx.dir / "acme" / ".well-known" / "acme-challenge"
        challenge.mkdir(parents=True)
        (challenge / "token-1").write_text("proof")
        acme = session.get(nginx.http_url + "/.well-known/acme-challenge/token-1")
        assert (acme.status_code, acme.text) == (200, "proof")

        health = session.get(edge.url + "/healthz")
        assert health.json() == {"status": "ok"}
        assert health.headers["Strict-Transport-Security"] == "max-age=63072000"
        assert health.headers["Server"] == "nginx"  # no version (server_tokens off)
        page = session.get(edge.url + "/")  # the app's page, with the app's headers
        assert (
            page.status_code == 200
            and "default-src 'self'" in page.headers["Content-Security-Policy"]
        )

        # Static files from disk, revalidated (ETag) rather than cached blind.
        script = session.get(edge.url + "/static/app.js")
        assert script.status_code == 200 and script.content == STATIC_APP_JS.read_bytes()
        assert script.headers["Cache-Control"] == "no-cache"
        assert script.headers["Content-Encoding"] == "gzip"
        again = session.get(
            edge.url + "/static/app.js", headers={"If-None-Match": script.headers["ETag"]}
        )
        assert again.status_code == 304

        # /metrics is per process: scraped on each process's port, never through nginx.
        assert session.get(edge.url + "/metrics").status_code == 403
        # The development login is refused behind a proxy (DEV_LOGIN with TRUSTED_PROXIES
        # does not start), and nginx does not route it either.
        assert session.get(edge.url + "/api/dev/users").status_code == 404

    # Bodies: up to a bit over 64 KiB reach the app (its JSON 413), beyond nginx answers
    # the same JSON; both say request_entity_too_large.
    alice = edge.stack.user("alice")
    small = edge.api(alice, ip, "POST", "/api/notifications/subscribe", json={"x": "a" * 68_000})
    big = edge.api(alice, ip, "POST", "/api/notifications/subscribe", json={"x": "a" * 100_000})
    for response in (small, big):
        assert response.status_code == 413
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error"] == "request_entity_too_large"
    log = [
        e
        for e in edge.log_until(
            lambda log: sum(e.uri == "/api/notifications/subscribe" for e in log) == 2,
            "the second POST",
        )
        if e.remote_addr == ip
    ]
    by_uri = {(e.method, e.uri, e.status): e.upstream for e in log}
    assert by_uri[("GET", "/static/app.js", 200)] is None  # nginx served it
    assert by_uri[("GET", "/metrics", 403)] is None
    assert by_uri[("GET", "/healthz", 200)] is not None
    posts = [e.upstreams for e in log if e.uri == "/api/notifications/subscribe"]
    assert [bool(p) for p in posts] == [True, False]  # the app answered the first only


def test_both_transports_across_backends_and_the_per_address_limit(edge: Edge) -> None:
    stack = edge.stack
    alice, bob, carol = stack.user("alice"), stack.user("bob"), stack.user("carol")
    topic = stack.topic(alice, bob, carol)
    before = {name: edge.connections(name) for name in ("web", "web2")}

    # bob: long-polling only (needs stickiness); alice: WebSocket only; carol: the browser
    # default, polling then an upgrade to WebSocket (the upgrade must reach the same process).
    bob_ip, alice_ip, carol_ip = edge.address("web2"), edge.address("web"), edge.address("web2")
    bob_c = edge.connect(bob, bob_ip, transports=["polling"])
    alice_c = edge.connect(alice, alice_ip, transports=["websocket"])
    carol_c = edge.connect(carol, carol_ip)
    assert bob_c.transport == "polling" and alice_c.transport == "websocket"
    wait_until(lambda: carol_c.transport == "websocket", message="carol did not upgrade")
    wait_until(
        lambda: (
            edge.connections("web") == before["web"] + 1
            and edge.connections("web2") == before["web2"] + 2
        ),
        message="the clients are not on the processes their addresses hash to",
    )

    # Presence across the processes.
    for other in (alice, carol):
        bob_c.wait_for_event(
            "user_status_change", lambda p, o=other: p["user_id"] == o.id and p["is_online"]
        )
    assert {alice.id, bob.id, carol.id} <= edge.online(bob, bob_ip)

    # Messages and unread counts across the processes. Alice and Carol look at the topic
    # (joined: not counted); Bob does not, so the unread worker's count reaches his polling
    # connection on the other process through Redis.
    for c in (alice_c, carol_c):
        assert c.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    sent = alice_c.call("send_message", topic.ref(message="through nginx"))
    assert sent["ok"], sent
    message = carol_c.wait_for_event("new_message", lambda p: p["id"] == sent["message"]["id"])
    assert message["body"] == "through nginx"
    bob_c.wait_for_event("global_message_alert", lambda p: p["topic_id"] == topic.topic_id)
    bob_c.wait_for_event(
        "unread_update", lambda p: p["topic_id"] == topic.topic_id and p["unread_count"] == 1
    )
    assert stack.unread(bob, topic) == 1 and stack.unread(carol, topic) == 0
    assert bob_c.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    read = bob_c.call("mark_as_read", topic.ref(message_ids=[sent["message"]["id"]]))
    assert read["ok"], read
    bob_c.wait_for_event(
        "unread_update", lambda p: p["topic_id"] == topic.topic_id and p["unread_count"] == 0
    )
    alice_c.wait_for_event("messages_read", lambda p: p["user_id"] == bob.id)
    # A polling client's larger packet, to both processes' WebSocket clients.
    reply = bob_c.call("send_message", topic.ref(message="polling reply " + "x" * 1500))
    assert reply["ok"], reply
    for c in (alice_c, carol_c):
        got = c.wait_for_event("new_message", lambda p: p["id"] == reply["message"]["id"])
        assert got["body"].startswith("polling reply")
    assert stack.unread(bob, topic) == 0

    # Stickiness, from nginx's side: every request of bob's polling session (and of carol's,
    # her upgrade included, logged once it closes) went to the process her address hashes to.
    bob_sid, carol_sid = bob_c.sio.eio.sid, carol_c.sio.eio.sid
    bob_requests = [e for e in edge.nginx.access_log() if e.sid == bob_sid]
    assert len(bob_requests) >= 4 and {e.transport for e in bob_requests} == {"polling"}
    assert edge.upstreams_of(bob_ip) == {"web2"}
    carol_c.disconnect()
    alice_c.disconnect()
    edge.log_until(
        lambda log: any(e.sid == carol_sid and e.transport == "websocket" for e in log),
        "carol's WebSocket",
    )
    assert edge.upstreams_of(carol_ip) == {"web2"}
    assert edge.upstreams_of(alice_ip) == {"web"}

    # The per-address connect limit counts the client's address, not nginx's, and a forged
    # X-Forwarded-For changes nothing (nginx replaces it).
    limited_ip, other_ip = edge.address("web"), edge.address("web2")
    codes = []
    for i in range(CONNECT_LIMIT + 1):
        client = edge.client(f"attempt{i}", limited_ip)
        token = carol.token if i == CONNECT_LIMIT else "garbage"
        ok, error = client.try_connect(
            edge.url,
            token,
            headers={"X-Forwarded-For": f"203.0.113.{i + 1}"},
            transports=["websocket"] if i % 2 else ["polling"],  # both count the address
        )
        codes.append("connected" if ok else error["data"]["error"])
        client.disconnect()
    assert codes == ["invalid_token"] * CONNECT_LIMIT + ["rate_limited"], codes
    elsewhere = edge.client("elsewhere", other_ip)
    ok, error = elsewhere.try_connect(edge.url, carol.token, transports=["websocket"])
    assert ok, error


def test_killing_a_backend_moves_its_clients_without_a_stuck_online_user(edge: Edge) -> None:
    stack = edge.stack
    grace, dave, erin, frank = (stack.user(n) for n in ("grace", "dave", "erin", "frank"))
    topic = stack.topic(grace, dave, erin)
    grace_ip = edge.address("web")
    wait_until(lambda: edge.online(grace, grace_ip) == set(), message="earlier users still online")
    fast = {"reconnection": True, "reconnection_delay": 0.1, "reconnection_delay_max": 0.5}
    grace_c = edge.connect(grace, grace_ip, transports=["websocket"])
    # On web2, the process to be killed: two clients that reconnect (one per transport) and
    # one that does not.
    dave_c = edge.connect(dave, edge.address("web2"), transports=["websocket"], **fast)
    erin_ip = edge.address("web2")
    erin_c = edge.connect(erin, erin_ip, transports=["polling"], **fast)
    frank_c = edge.connect(frank, edge.address("web2"), transports=["websocket"])
    assert grace_c.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    wait_until(
        lambda: (edge.connections("web"), edge.connections("web2")) == (1, 3),
        message="the clients are not on the processes their addresses hash to",
    )
    everyone = {grace.id, dave.id, erin.id, frank.id}
    wait_until(lambda: edge.online(grace, grace_ip) == everyone, message="not all online")
    erin_old_sid = erin_c.sio.eio.sid
    mark = grace_c.mark()

    stack.extra["web2"].kill()

    for c in (dave_c, erin_c):
        wait_until(
            lambda c=c: len(c.received("connect")) == 2 and c.connected,
            timeout=20,
            message=f"{c.name} did not reconnect through nginx",
        )
    wait_until(lambda: frank_c.received("disconnect"), message="frank's connection stayed open")
    assert not frank_c.connected
    assert edge.connections("web") == 3
    # web2's connections are swept once its heartbeat expires: frank goes offline, the
    # moved users stay online through web.
    grace_c.wait_for_event(
        "user_status_change",
        lambda p: p["user_id"] == frank.id and not p["is_online"],
        timeout=20,
        after=mark,
    )
    wait_until(
        lambda: edge.online(grace, grace_ip) == {grace.id, dave.id, erin.id},
        timeout=20,
        message="the online users are not exactly the connected ones",
    )
    for moved in (dave, erin):
        changes = [
            p["is_online"]
            for p in grace_c.events("user_status_change", after=mark)
            if p["user_id"] == moved.id
        ]
        assert changes in ([], [False, True]), (moved.username, changes)

    # The moved clients work on their new process: Dave opens the topic and gets the
    # message, Erin does not and gets its count (from the worker, through Redis).
    assert dave_c.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    sent = grace_c.call("send_message", topic.ref(message="after the failover"))
    assert sent["ok"], sent
    dave_c.wait_for_event("new_message", lambda p: p["id"] == sent["message"]["id"])
    erin_c.wait_for_event(
        "unread_update", lambda p: p["topic_id"] == topic.topic_id and p["unread_count"] == 1
    )
    assert stack.unread(dave, topic) == 0 and stack.unread(erin, topic) == 1
    assert erin_c.sio.eio.sid != erin_old_sid
    sid = erin_c.sio.eio.sid
    log = edge.log_until(lambda log: any(e.sid == sid for e in log), "erin's new session")
    erin_new = [e for e in log if e.sid == sid]
    assert {edge.backends[e.upstream] for e in erin_new if e.upstream} == {"web"}
