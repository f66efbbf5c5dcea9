"""Cross-origin protection: another site's page cannot change runs; the dashboard's own htmx requests and API
clients without an Origin (scripts, tests) can."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.web.app import create_app
from jetdag.web.csrf import refusal

Http = AsyncTestClient[Any]

HOST = "testserver.local"  # what Litestar's test client sends as Host
ONE = WorkflowSpec("t_csrf_one", (TaskSpec("only", "noop"),))

# What Chromium sends with an htmx POST from the dashboard, and with a form another site's page submits.
SAME_ORIGIN = {"Origin": f"http://{HOST}", "Sec-Fetch-Site": "same-origin", "HX-Request": "true"}
CROSS_SITE = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


@pytest.mark.parametrize(
    ("method", "sec_fetch_site", "origin", "allowed"),
    [
        ("GET", "cross-site", "https://evil.example", True),  # reading changes nothing
        ("HEAD", "cross-site", None, True),
        ("POST", "same-origin", "http://127.0.0.1:8080", True),
        ("POST", "none", None, True),  # the user's own navigation (address bar, bookmark)
        ("POST", "cross-site", "https://evil.example", False),
        ("POST", "same-site", "http://127.0.0.1:3000", False),  # another port on this machine is the same site
        ("DELETE", "cross-site", None, False),
        ("POST", None, None, True),  # curl, httpx, the test client
        ("POST", None, "http://127.0.0.1:8080", True),  # an older browser, same origin
        ("POST", None, "http://127.0.0.1:3000", False),
        ("POST", None, "null", False),  # a sandboxed frame or a redirect hides where it came from
        ("PUT", None, "https://evil.example", False),
    ],
)
def test_the_rule(method: str, sec_fetch_site: str | None, origin: str | None, allowed: bool) -> None:
    assert (refusal(method, "127.0.0.1:8080", sec_fetch_site, origin) is None) is allowed


@pytest.fixture
async def http(nats_url: str, system: System) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def test_a_cross_site_post_is_refused_403_and_changes_nothing(http: Http, client: Client) -> None:
    await client.apply(ONE)
    response = await http.post(f"/api/v1/workflows/{ONE.name}/runs", json={}, headers=CROSS_SITE)
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert detail.startswith(f"cross-origin request refused: POST /api/v1/workflows/{ONE.name}/runs")
    assert "https://evil.example" in detail and "from a script or the CLI" in detail
    assert await client.runs_list(workflow=ONE.name) == []

    # Every other state-changing route is behind the same check, pages' form posts included.
    run_id = await client.submit(ONE.name)
    await client.wait(run_id, timeout=15)
    for path in (f"/api/v1/runs/{run_id}/cancel", f"/api/v1/runs/{run_id}/rerun", f"/api/v1/runs/{run_id}/pause",
                 f"/api/v1/runs/{run_id}/resume", f"/api/v1/runs/{run_id}/tasks/only/ignore",
                 "/api/v1/dead-letters/1/requeue", "/dead-letters/1/requeue", "/api/v1/workflows"):  # fmt: skip
        assert (await http.post(path, headers=CROSS_SITE)).status_code == 403, path
    old_browser = {"Origin": "http://127.0.0.1:3000"}  # no Sec-Fetch-Site: judged by its Origin
    assert (await http.post(f"/api/v1/runs/{run_id}/rerun", headers=old_browser)).status_code == 403
    assert [r["run_id"] for r in await client.runs_list(workflow=ONE.name)] == [run_id]  # no rerun started

    # Reading stays open: a cross-site GET changes nothing (and its answer is not readable without CORS).
    assert (await http.get(f"/api/v1/runs/{run_id}", headers=CROSS_SITE)).status_code == 200


async def test_the_dashboards_htmx_post_and_a_plain_api_client_get_through(http: Http, client: Client) -> None:
    await client.apply(ONE)
    by_page = await http.post(f"/api/v1/workflows/{ONE.name}/runs", json={}, headers=SAME_ORIGIN)
    assert by_page.status_code == 201, by_page.text
    by_script = await http.post(f"/api/v1/workflows/{ONE.name}/runs", json={})  # no Origin, no Sec-Fetch-Site
    assert by_script.status_code == 201, by_script.text
    await client.wait(by_page.json()["run_id"], timeout=15)
    old_browser = {"Origin": f"http://{HOST}"}  # same origin, judged by Origin against Host
    rerun = await http.post(f"/api/v1/runs/{by_page.json()['run_id']}/rerun", headers=old_browser)
    assert rerun.status_code == 201, rerun.text
    # A page's own form post (the dead letters page's requeue button): past the check, the page's answer.
    requeue = await http.post("/dead-letters/7/requeue", headers=SAME_ORIGIN)
    assert requeue.status_code == 200 and "7" in requeue.text, requeue.text
