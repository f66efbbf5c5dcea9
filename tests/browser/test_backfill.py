"""A backfill from the workflow page in a real browser against a real `jetdag up`: preview, start, runs appear."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.up_process import Up, write

HOURLY = """\
name: hourlybackfill
description: one noop an hour
schedule: "0 * * * *"
tasks:
  - {name: only, handler: noop}
"""


@pytest.fixture(scope="module")
def hourly(up: Up) -> Iterator[str]:
    done = up.cli("apply", str(write(up.root / "hourlybackfill.yaml", HOURLY)))
    assert done.returncode == 0, done.stderr
    yield "hourlybackfill"


def test_a_backfill_is_previewed_then_started_and_its_runs_appear(
    up: Up, hourly: str, page: Any, screenshots: Path
) -> None:
    page.goto(f"{up.http}workflows/{hourly}")
    expect(page.locator("#trigger-cron")).to_contain_text("0 * * * *")
    page.get_by_label("from (UTC)").fill("2025-03-01T00:00")
    page.get_by_label("to (UTC, included)").fill("2025-03-01T06:00")
    page.get_by_label("meta (key=value, one a line)").fill("source=browser")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#backfill-count")).to_contain_text("7 runs", timeout=10_000)
    expect(page.locator("#backfill-count")).to_contain_text("7 new, 0 exist already")
    page.get_by_label("to (UTC, included)").fill("2025-03-01T05:59")  # a preview of other values is gone
    expect(page.locator("#backfill-result")).to_be_empty()
    page.get_by_role("button", name="Preview").click()
    start = page.locator("#backfill-start")
    expect(start).to_have_text("Start 6 runs", timeout=10_000)
    expect(page.locator(".backfill-runs tbody tr")).to_have_count(6)
    page.screenshot(path=str(screenshots / "workflow-backfill-preview.png"), full_page=True)

    start.click()
    expect(page.locator("#backfill-started")).to_have_text("Started 6 runs.", timeout=20_000)
    started = page.locator(".backfill-runs a")
    expect(started).to_have_count(6)
    run_ids = [href.rsplit("/", 1)[1] for href in (started.nth(i).get_attribute("href") for i in range(6)) if href]
    # The recent runs table (kept current over SSE) shows them, and they finish.
    for run_id in run_ids:
        row = page.locator(f"#workflow-runs tr:has(a[href='/runs/{run_id}'])")
        expect(row.locator("td.state")).to_have_text("succeeded", timeout=20_000)
    page.screenshot(path=str(screenshots / "workflow-backfill-started.png"), full_page=True)
    assert {up.json("status", r)["meta"]["source"] for r in run_ids} == {"browser"}

    # Asked again, it has nothing left to start.
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#backfill-count")).to_contain_text("0 new, 6 exist already", timeout=10_000)
    expect(page.locator("#backfill-start")).to_be_disabled()
    expect(page.locator(".backfill-runs a")).to_have_count(6)  # existing runs link to their pages
    page.locator(".backfill-runs a").first.click()
    page.wait_for_url(re.compile(rf"/runs/{run_ids[0]}$"))


def test_the_schedule_and_backfill_sections_fit_a_phone_in_dark_mode(
    up: Up, hourly: str, browser: Any, screenshots: Path
) -> None:
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    try:
        page = ctx.new_page()
        page.goto(f"{up.http}workflows/{hourly}")
        page.get_by_label("from (UTC)").fill("2025-04-01T00:00")
        page.get_by_label("to (UTC, included)").fill("2025-04-01T02:00")
        page.get_by_role("button", name="Preview").click()
        expect(page.locator("#backfill-start")).to_have_text("Start 3 runs", timeout=10_000)
        # Wide tables scroll inside their box; the page itself never scrolls sideways.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(screenshots / "workflow-backfill-dark-phone.png"), full_page=True)
    finally:
        ctx.close()


def test_switching_the_schedule_off_on_its_page_clears_the_triggers_next_fire(up: Up, hourly: str, page: Any) -> None:
    page.goto(f"{up.http}workflows/{hourly}")
    next_fire = page.locator("#trigger-cron td").nth(5)
    expect(next_fire).to_contain_text(re.compile(r"20\d\d-\d\d-\d\d \d\d:00"))
    page.on("dialog", lambda dialog: dialog.accept())  # "Switch off the schedule of …?"
    page.get_by_role("button", name="switch off").click()
    expect(page.get_by_role("button", name="switch on")).to_be_visible(timeout=10_000)
    expect(next_fire).to_have_text("off")
    page.get_by_role("button", name="switch on").click()
    expect(next_fire).to_contain_text(re.compile(r"20\d\d-\d\d-\d\d \d\d:00"), timeout=10_000)
