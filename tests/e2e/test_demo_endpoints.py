"""The web tier's demo routes over HTTP (no browser): the page, the service worker, the
vendored client, and the development login — on with ``DEV_LOGIN=1``, 404 without it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "webapp" / "static"


def test_page_service_worker_and_assets_are_served(beacon):
    page = beacon.api(None, "GET", "/")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith("/") for ref in refs), refs  # no CDN, no other origin
    for ref in refs:
        if ref != "/":
            assert beacon.api(None, "GET", ref).status_code == 200, ref

    worker = beacon.api(None, "GET", "/sw.js")
    assert worker.status_code == 200
    assert worker.headers["Content-Type"].startswith("text/javascript")
    assert worker.headers["Service-Worker-Allowed"] == "/"
    assert 'addEventListener("push"' in worker.text
    assert 'addEventListener("notificationclick"' in worker.text

    client = beacon.api(None, "GET", "/static/vendor/socket.io.min.js")
    assert client.status_code == 200 and client.text.startswith("/*!\n * Socket.IO v4.")
    for name in ("icon-192.png", "badge-72.png", "icon.svg"):
        assert beacon.api(None, "GET", f"/static/{name}").status_code == 200, name


def test_vendored_client_is_pinned_and_licensed():
    vendor = STATIC / "vendor"
    readme = (vendor / "README.md").read_text()
    version = re.search(r"\| (\d+\.\d+\.\d+) \|", readme).group(1)
    assert f"VERSION={version}" in (ROOT / "scripts" / "vendor_js.sh").read_text()
    assert f"Socket.IO v{version}" in (vendor / "socket.io.min.js").read_text()[:200]
    assert "MIT License" in (vendor / "socket.io-client.LICENSE").read_text()
    for path in STATIC.rglob("*"):
        if path.suffix in {".html", ".js", ".css"} and path.parent != vendor:
            assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", path.read_text()), path


def test_dev_login_when_enabled(beacon):
    alice = beacon.user("alice", "Alice Martin")
    listed = beacon.api(None, "GET", "/api/dev/users", params={"q": alice.username})
    assert listed.status_code == 200, listed.text
    assert listed.json() == {
        "users": [
            {
                "user_id": alice.id,
                "username": alice.username,
                "display_name": "Alice Martin",
                "is_online": False,
                "status": "offline",
                "last_seen_at": None,
            }
        ],
        "truncated": False,
    }
    # LIKE wildcards in the filter are literal characters.
    assert beacon.api(None, "GET", "/api/dev/users", params={"q": "%"}).json()["users"] == []

    issued = beacon.api(None, "POST", "/api/dev/token", json={"username": alice.username})
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert body["user"]["user_id"] == alice.id and body["expires_in"] > 0
    me = beacon.api(
        None, "GET", "/api/users/me", headers={"Authorization": f"Bearer {body['token']}"}
    )
    assert me.status_code == 200 and me.json()["username"] == alice.username

    unknown = beacon.api(None, "POST", "/api/dev/token", json={"username": "nobody-here"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "user_not_found"
    extra = beacon.api(None, "POST", "/api/dev/token", json={"username": "x", "admin": True})
    assert extra.status_code == 400 and extra.json()["error"] == "unknown_field"
    wrong = beacon.api(None, "POST", "/api/dev/token", json={"username": 7})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_username"


@pytest.mark.parametrize("value", ["", "0", "off"])
def test_dev_login_is_off_by_default(beacon, value):
    from config import load_settings
    from webapp import create_app

    env = {k: v for k, v in beacon.env.items() if k != "DEV_LOGIN"}
    if value:
        env["DEV_LOGIN"] = value
    app = create_app(load_settings(env), serve_sockets=False)
    assert app.extensions["beacon_settings"].dev_login is False
    client = app.test_client()
    for method, path in (("GET", "/api/dev/users"), ("POST", "/api/dev/token")):
        response = client.open(path, method=method, json={"username": "alice"})
        assert response.status_code == 404, path
        assert response.get_json()["error"] == "not_found"
    assert client.get("/").status_code == 200  # the page itself still loads (token sign-in)
