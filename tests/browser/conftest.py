"""Browser tests: Playwright for Python driving Debian's Chromium (docs/ui.md).

Playwright's own browser download does not work here, so the tests launch the machine's
``chromium`` through ``executable_path``. ``tests/browser/test_ui.py`` skips itself when
that binary or the ``playwright`` package is missing; CI installs both.

A failing test leaves a screenshot of every page it had open in ``var/test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
# Generous for a loaded CI machine; every wait is on a page condition, never a sleep.
EXPECT_TIMEOUT_MS = 15_000

ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"

_reports = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    item.stash.setdefault(_reports, {})[report.when] = report
    return report


@pytest.fixture(autouse=True)
def _server_password_hashing(_fast_password_hashing: None, settings: Any) -> None:
    """Users get hashes the server under test can check: it runs the project's hashers, not
    the fast test-only one (so the login form is used for real, at ~0.3 s a password)."""
    from django.conf import global_settings

    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS


@pytest.fixture(scope="module")
def playwright(django_db_setup: Any) -> Iterator[Playwright]:
    """Playwright's sync API, for one module at a time (then its event loop is gone again).

    While it runs, its event loop counts as "running" in this thread, although it never
    runs anything while test code does. Django would then refuse every ORM call of the
    tests and fixtures; ``DJANGO_ALLOW_ASYNC_UNSAFE`` (Playwright's documented advice for
    Django) lifts that for exactly this module, and the database is set up before.
    """
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    previous = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_playwright() as p:
            yield p
    finally:
        if previous is None:
            os.environ.pop(ASYNC_UNSAFE, None)
        else:
            os.environ[ASYNC_UNSAFE] = previous


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


@pytest.fixture
def context(
    request: pytest.FixtureRequest, browser: Browser, server: str
) -> Iterator[BrowserContext]:
    """A fresh browser profile on the test server, 1280 px wide."""
    context = browser.new_context(
        base_url=f"http://{server}", viewport={"width": 1280, "height": 800}
    )
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    yield context
    reports = request.node.stash.get(_reports, {})
    if any(r.failed for r in reports.values()):
        _screenshots(request.node.nodeid, context.pages)
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def _screenshots(nodeid: str, pages: list[Page]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1])
    for number, page in enumerate(pages, start=1):
        try:
            page.screenshot(path=str(ARTIFACTS / f"{stem}-page{number}.png"), full_page=True)
        except Exception as exc:  # a crashed page must not hide the test's own failure
            print(f"could not save a screenshot of page {number}: {exc}")
