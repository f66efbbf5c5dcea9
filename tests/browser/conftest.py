"""Browser tests: Debian's chromium driven by Playwright (never `playwright install`), against a real `jetdag up`."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.up_process import Up, start_up, stop_up, write

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

WORKFLOW = """\
name: browsertest
description: noop, then a sleep long enough to watch, then noop
params: {seconds: 1.5}
tasks:
  - {name: first, handler: noop}
  - {name: nap, handler: sleep, depends_on: first, payload: {seconds: "{param:seconds}"}}
  - {name: last, handler: noop, depends_on: nap}
"""


# Module scope, not session: Playwright's sync API runs an event loop in this thread while it is open, and
# pytest-asyncio tests cannot start theirs until it is closed (they would all fail after this module).
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium")
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One `jetdag up` (embedded NATS, engine, worker, dashboard) for the module, with workflow `browsertest`."""
    root = tmp_path_factory.mktemp("up")
    running = start_up(root)
    try:
        done = running.cli("apply", str(write(root / "browsertest.yaml", WORKFLOW)))
        assert done.returncode == 0, done.stderr
        yield running
    finally:
        stop_up(running, signal.SIGTERM)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1000, "height": 800})
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
