"""Browser fixtures: Playwright driving Debian's Chromium against the real stack.

The browser is the system Chromium (``/usr/bin/chromium``, or ``BEACON_CHROMIUM``); Playwright's
own browser downloads are not used. Without Playwright or Chromium the browser tests are skipped
with the reason, except in CI (``CI`` set), where that is a failure: ``.ci/run`` installs both.

Browser tests run against one backend only (the first of ``--backends``): the page talks to the
same HTTP and Socket.IO API whatever the database, and the API itself is covered on both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("BEACON_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
EXPECT_TIMEOUT_MS = 15_000


def browser_unavailable_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements.txt)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an asyncio loop running in this thread while
    it is open, which would break later tests that run their own loop."""
    reason = browser_unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests are required in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def e2e(backend: str, request: pytest.FixtureRequest) -> Any:
    """The running stack (``beacon``), on the first selected backend only."""
    first = request.config.getoption("--backends").split(",")[0].strip()
    if backend != first:
        pytest.skip(f"browser tests run on one backend ({first}); the API is tested on all")
    return request.getfixturevalue("beacon")


@pytest.fixture
def new_context(browser: Any, e2e: Any) -> Iterator[Callable[..., Any]]:
    """``new_context(notifications=False)``: a fresh browser profile (own storage, own SW)."""
    contexts = []

    def make(notifications: bool = False) -> Any:
        context = browser.new_context(viewport=VIEWPORT, base_url=e2e.url)
        if notifications:
            context.grant_permissions(["notifications"], origin=e2e.url)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
