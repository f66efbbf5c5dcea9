"""The dashboard in a real browser against a real `jetdag up`: live run pages, Run now, cancel, screenshots."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import nats
import orjson
from playwright.sync_api import expect

from jetdag.engine import subjects as S
from tests.e2e.up_process import Up

RUN_URL = re.compile(r"/runs/[0-9A-Z]{26}$")


def submit(up: Up, seconds: float) -> str:
    done = up.cli("submit", "browsertest", "-p", f"seconds={seconds}")
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0].strip()


def has(state: str) -> re.Pattern[str]:
    return re.compile(rf"\bs-{state}\b")


def test_a_task_turns_green_on_the_run_page_without_a_reload(up: Up, page: Any) -> None:
    run_id = submit(up, 2.0)
    page.goto(f"{up.http}runs/{run_id}")
    page.evaluate("window.__same_page = true")  # gone if the page were reloaded
    nap = page.locator("#node-nap")
    expect(nap).to_have_class(has("running"), timeout=10_000)
    expect(page.locator("#t-nap .state")).to_have_text("running")
    expect(nap).to_have_class(has("succeeded"), timeout=10_000)
    expect(page.locator("#node-last")).to_have_class(has("succeeded"), timeout=5_000)
    expect(page.locator("#run-status")).to_have_class(has("succeeded"))
    assert page.evaluate("window.__same_page") is True


def report_progress(up: Up, run_id: str, task: str, data: dict[str, Any]) -> None:
    """Publish what a handler's `ctx.progress(...)` would, as its worker does (core NATS, msgpack)."""
    body = {"v": 1, "k": "task.progress", "run": run_id, "task": task, "attempt": 1, "ts": time.time(),
            "worker": "browser-test", "data": data}  # fmt: skip
    subject = S.event_subject(S.partition_of(run_id), run_id) + ".info"

    async def send() -> None:
        nc = await nats.connect(up.nats)
        try:
            await nc.publish(subject, msgpack.packb(body))
            await nc.flush()
        finally:
            await nc.close()

    # Playwright's sync API holds an event loop in this thread: NATS gets a thread of its own.
    thread = threading.Thread(target=asyncio.run, args=(send(),))
    thread.start()
    thread.join(10)


def test_new_runs_and_progress_show_live_and_other_sites_cannot_cancel(up: Up, page: Any, screenshots: Path) -> None:
    page.goto(f"{up.http}workflows/browsertest")
    page.evaluate("window.__same_page = true")
    run_id = submit(up, 30.0)
    link = page.locator(f"#workflow-runs a[href='/runs/{run_id}']")
    expect(link).to_be_visible(timeout=10_000)  # the recent runs table, updated over SSE
    assert page.evaluate("window.__same_page") is True
    link.click()
    page.wait_for_url(RUN_URL)
    expect(page.locator("#t-nap .state")).to_have_text("running", timeout=10_000)
    report_progress(up, run_id, "nap", {"done": 2, "total": 8, "message": "napping"})
    expect(page.locator("#p-nap")).to_have_text("2/8 (25%) napping", timeout=5_000)
    expect(page.locator("#p-nap progress")).to_have_attribute("value", "25.0")
    report_progress(up, run_id, "nap", {"done": 6, "total": 8})
    expect(page.locator("#p-nap")).to_have_text("6/8 (75%)", timeout=5_000)
    page.screenshot(path=str(screenshots / "run-progress-light.png"), full_page=True)

    # Another site's page posts a form to the cancel endpoint: the browser says so, and jetdag refuses.
    other = page.context.new_page()
    other.set_content(f'<form id="f" method="post" action="{up.http}api/v1/runs/{run_id}/cancel"></form>')
    with other.expect_navigation():
        other.evaluate("document.getElementById('f').submit()")
    assert "cross-origin request refused" in other.content()
    assert up.json("status", run_id)["status"] == "running"

    # A script (no Origin) may: the page turns cancelled and the progress goes with the running task.
    assert httpx.post(f"{up.http}api/v1/runs/{run_id}/cancel", timeout=10).status_code == 202
    expect(page.locator("#run-status")).to_have_class(has("cancelled"), timeout=10_000)
    expect(page.locator("#p-nap")).to_be_empty()


def test_run_now_starts_a_run_with_the_form_params_and_lands_on_its_page(up: Up, page: Any) -> None:
    page.goto(f"{up.http}workflows/browsertest")
    field = page.locator("input[name=seconds]")
    expect(field).to_have_value("1.5")  # the declared default
    field.fill("0.1")
    page.locator("#run-now-submit").click()
    page.wait_for_url(RUN_URL, timeout=10_000)
    expect(page.locator("#run-status")).to_have_class(has("succeeded"), timeout=10_000)
    run_id = page.url.rsplit("/", 1)[1]
    view = up.json("status", run_id)
    assert view["params"] == {"seconds": 0.1}  # "0.1" parsed as JSON, like `submit -p`


def test_cancel_from_the_run_page_cancels_the_run(up: Up, page: Any) -> None:
    run_id = submit(up, 30.0)
    page.goto(f"{up.http}runs/{run_id}")
    expect(page.locator("#node-nap")).to_have_class(has("running"), timeout=10_000)
    page.on("dialog", lambda dialog: dialog.accept())  # the "Cancel run …?" confirmation
    page.locator("#btn-cancel").click()
    expect(page.locator("#run-status")).to_have_class(has("cancelled"), timeout=10_000)
    expect(page.locator("#answer")).not_to_have_class(has("error"))
    assert up.json("status", run_id)["status"] == "cancelled"


def test_rerun_from_here_starts_a_new_run_linked_from_the_answer(up: Up, page: Any) -> None:
    run_id = submit(up, 0.1)
    page.goto(f"{up.http}runs/{run_id}")
    expect(page.locator("#run-status")).to_have_class(has("succeeded"), timeout=10_000)
    page.locator("#t-nap button[title='rerun from nap']").click()
    link = page.locator("#answer a")
    expect(link).to_have_text(re.compile(r"open run [0-9A-Z]{26}"), timeout=5_000)
    link.click()
    page.wait_for_url(RUN_URL)
    assert page.url.rsplit("/", 1)[1] != run_id
    expect(page.locator("#run-status")).to_have_class(has("succeeded"), timeout=10_000)
    expect(page.locator(".run-head")).to_contain_text(f"rerun of {run_id}")


def test_the_stream_api_sends_json_step_records_and_resyncs_a_reconnect(up: Up) -> None:
    url = f"{up.http}api/v1/stream"
    with httpx.Client(timeout=httpx.Timeout(10.0)) as http:
        with http.stream("GET", url, params={"workflow": "browsertest"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            run_id = submit(up, 0.1)
            events = _events(response.iter_lines())
            steps = []
            for event, data, event_id in events:
                assert event == "step"
                step = orjson.loads(data)
                assert step["run"] == run_id and step["workflow"] == "browsertest"
                assert event_id == f"{run_id}:{step['seq']}"
                steps.append(step)
                if step["status"] == "succeeded":
                    break
        seqs = [s["seq"] for s in steps]
        assert seqs == sorted(seqs)
        moved = {(t["task"], t["status"]) for s in steps for t in s["transitions"] if t.get("task")}
        assert {("nap", "running"), ("nap", "succeeded"), ("last", "succeeded")} <= moved

        # A reconnect (Last-Event-ID) first gets the current state, since history is not replayed.
        headers = {"Last-Event-ID": f"{run_id}:1"}
        with http.stream("GET", url, params={"run": run_id}, headers=headers) as response:
            event, data, _ = next(_events(response.iter_lines()))
        assert event == "resync"
        assert orjson.loads(data)["run"]["status"] == "succeeded"


def _events(lines: Any) -> Any:
    """(event, data, id) per server-sent event; comments (pings) skipped."""
    event, data, event_id = "message", [], ""
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data), event_id
            event, data, event_id = "message", [], ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("id:"):
            event_id = line[3:].strip()


def test_screenshots_of_every_page(up: Up, browser: Any, screenshots: Path) -> None:
    run_id = submit(up, 0.1)
    up.cli("status", run_id)
    pages = {
        "overview": "",
        "workflows": "workflows",
        "workflow": "workflows/browsertest",
        "runs": "runs",
        "run": f"runs/{run_id}",
    }
    for scheme, viewport in (("light", {"width": 1100, "height": 800}), ("dark-phone", {"width": 390, "height": 844})):
        ctx = browser.new_context(viewport=viewport, color_scheme="dark" if scheme == "dark-phone" else "light")
        try:
            page = ctx.new_page()
            for name, path in pages.items():
                response = page.goto(f"{up.http}{path}")
                assert response is not None and response.ok, (path, response and response.status)
                page.wait_for_selector("main h1")
                if name == "run":
                    expect(page.locator("#run-status")).to_have_class(has("succeeded"), timeout=10_000)
                    expect(page.locator("svg.dag .node")).to_have_count(3)
                # Wide tables and graphs scroll inside their box; the page itself never scrolls sideways.
                assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], name
                page.screenshot(path=str(screenshots / f"{name}-{scheme}.png"), full_page=True)
        finally:
            ctx.close()
