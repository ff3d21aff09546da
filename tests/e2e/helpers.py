"""Helpers for the browser tests (fixtures are in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class PageWatch:
    """What a page did that a test wants to check afterwards."""

    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def foreign_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(self.origin + "/")]


def watch(page: Any, origin: str) -> PageWatch:
    """Record every request and every script error or console error of ``page``."""
    seen = PageWatch(origin)
    page.on("request", lambda req: seen.requests.append(req.url))
    page.on("pageerror", lambda exc: seen.errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: (
            seen.errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    return seen


def sign_in(page: Any, username: str) -> None:
    """Pick ``username`` on the development login screen, as a person would."""
    from playwright.sync_api import expect

    page.goto("/")
    page.fill("#user-filter", username)
    page.click(f'.user-choice[data-username="{username}"]')
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    expect(page.locator("#me .me-username")).to_have_text(f"@{username}")


def pump_until(page: Any, predicate: Callable[[], T], timeout: float, message: str) -> T:
    """Wait for something only a Playwright event handler can change (e.g. a CDP event).

    The sync API delivers events only while a Playwright call is running, so this yields to it
    in short waits until ``predicate`` holds; it is bounded polling, not a guessed delay.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} after {timeout:.0f}s")
        page.wait_for_timeout(25)


def service_worker_registration_id(context: Any, page: Any, scope: str) -> tuple[Any, str]:
    """A CDP session on ``page`` and the DevTools id of the service worker registration."""
    page.evaluate("navigator.serviceWorker.ready.then(r => r.active.state)")
    cdp = context.new_cdp_session(page)
    registrations: dict[str, str] = {}

    def on_update(event: dict[str, Any]) -> None:
        for reg in event["registrations"]:
            if not reg["isDeleted"]:
                registrations[reg["scopeURL"]] = reg["registrationId"]

    cdp.on("ServiceWorker.workerRegistrationUpdated", on_update)
    cdp.send("ServiceWorker.enable")
    registration_id = pump_until(
        page, lambda: registrations.get(scope), 10, f"no service worker registration for {scope}"
    )
    return cdp, registration_id


def service_worker(context: Any, page: Any, script_url: str) -> Any:
    """Playwright's handle on the running service worker (to evaluate code in its scope)."""
    page.evaluate("navigator.serviceWorker.ready.then(r => r.active.state)")
    for worker in reversed(context.service_workers):
        if worker.url == script_url:
            return worker
    return context.wait_for_event(
        "serviceworker", predicate=lambda w: w.url == script_url, timeout=10_000
    )


# Replaces the browser's push service, which headless Chromium cannot reach here (no internet,
# and Chromium refuses push in incognito-like contexts). The subscription it hands out is a real
# one, created on the local push service; the page code around it runs unchanged.
FAKE_PUSH_MANAGER = """
(() => {
  const issued = %s;
  const toB64Url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  let current = null;
  window.__pushSubscribeCalls = [];
  PushManager.prototype.subscribe = async function (options) {
    window.__pushSubscribeCalls.push({
      userVisibleOnly: options.userVisibleOnly,
      applicationServerKey: toB64Url(options.applicationServerKey),
    });
    current = {
      endpoint: issued.endpoint,
      expirationTime: null,
      options,
      toJSON: () => ({ endpoint: issued.endpoint, expirationTime: null, keys: issued.keys }),
      unsubscribe: async () => { current = null; return true; },
    };
    return current;
  };
  PushManager.prototype.getSubscription = async function () { return current; };
})();
"""


# What a topic screen shows, to compare two pages: the open topic's title and messages (id,
# text), every topic's unread badge (null: none), and the "Seen by" lines by message.
SCREEN_STATE = """
() => ({
  topic: document.querySelector("#topic-title").textContent,
  messages: [...document.querySelectorAll("#messages .message")]
    .map((m) => [m.dataset.messageId, m.querySelector(".body").textContent]),
  badges: Object.fromEntries([...document.querySelectorAll("#topic-list .topic")]
    .map((t) => [t.dataset.topicId, t.querySelector(".badge")?.textContent ?? null])),
  seen: [...document.querySelectorAll("#messages .message .receipt")]
    .map((r) => [r.closest(".message").dataset.messageId, r.textContent]),
})
"""


def screen_state(page: Any) -> dict[str, Any]:
    """What ``page`` shows of its topics (see ``SCREEN_STATE``)."""
    return page.evaluate(SCREEN_STATE)


# Make the page hidden or visible, as switching tabs or minimising the window would (headless
# Chromium keeps every page visible).
SET_VISIBILITY = """
(hidden) => {
  const state = hidden ? "hidden" : "visible";
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  document.dispatchEvent(new Event("visibilitychange"));
}
"""


def set_hidden(page: Any, hidden: bool) -> None:
    """Hide the page (it reports idle) or show it again and use it (it reports active)."""
    page.evaluate(SET_VISIBILITY, hidden)
    if not hidden:
        page.mouse.move(200, 300)
        page.keyboard.press("Shift")
