"""The data pages render against a real system and auditor: tasks, workers, dead letters, SQL, alerts, files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from jetdag.engine.client import Client
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from jetdag.web.app import create_app
from tests.helpers import eventually

Http = AsyncTestClient[Any]
HX = {"HX-Request": "true"}
DOOMED = WorkflowSpec(
    "t_pages_doomed",
    (TaskSpec("boom", "command", payload={"argv": ["false"]}, retry=RetryPolicy(max_attempts=1)),),
)


@pytest.fixture
async def http(nats_url: str, audited_system: None) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def test_tasks_page_and_its_fragment(nats_url: str, http: Http) -> None:
    async with await Client.connect(nats_url) as client:
        await client.apply(DOOMED)
        run_id = await client.submit(DOOMED.name)
        await client.wait(run_id, timeout=20)

    async def listed() -> str:
        page = await http.get("/tasks", params={"workflow": DOOMED.name})
        assert page.status_code == 200 and run_id in page.text, page.text
        return page.text

    page = await eventually(listed)
    assert "<html" in page and 'hx-push-url="true"' in page and "s-failed" in page
    fragment = await http.get("/tasks", params={"workflow": DOOMED.name, "limit": 1}, headers=HX)
    assert "<html" not in fragment.text and 'id="tasks-table"' in fragment.text and run_id in fragment.text
    none = await http.get("/tasks", params={"workflow": "nothing-like-this"}, headers=HX)
    assert "No tasks match." in none.text

    # The dead task is on the dead letters page with its requeue button, which answers in place.
    async def dead() -> str:
        text = (await http.get("/dead-letters")).text
        assert run_id in text
        return text

    letters = await eventually(dead)
    assert 'hx-post="/dead-letters/' in letters and "requeue" in letters
    seq = letters.split('hx-post="/dead-letters/')[1].split("/")[0]
    answer = await http.post(f"/dead-letters/{seq}/requeue")
    assert answer.status_code == 200 and "requeued as" in answer.text
    again = await http.post(f"/api/v1/dead-letters/{seq}/requeue")
    assert again.status_code == 404
    assert seq not in [str(d["seq"]) for d in (await http.get("/api/v1/dead-letters")).json()["letters"]]


async def test_workers_page_refreshes_itself(http: Http) -> None:
    async def alive() -> str:
        text = (await http.get("/workers")).text
        assert "alive" in text
        return text

    page = await eventually(alive)
    assert 'hx-trigger="every 3s"' in page and "<html" in page
    fragment = (await http.get("/workers", headers=HX)).text
    assert "<html" not in fragment and 'hx-trigger="every 3s"' in fragment


async def test_sql_page_runs_queries_shows_errors_and_downloads_csv(http: Http) -> None:
    page = (await http.get("/sql")).text
    assert "<textarea" in page and 'value="failures"' in page  # saved queries fill the box
    result = await http.post("/sql", data={"q": "SELECT 1 AS one, 'a<b' AS two"})
    assert result.status_code == 200 and "<th>one</th>" in result.text and "a&lt;b" in result.text
    assert "/sql.csv?q=" in result.text
    refused = await http.post("/sql", data={"q": "DROP TABLE runs"})
    assert refused.status_code == 200 and 'class="error"' in refused.text and "read-only" in refused.text
    csv = await http.get("/sql.csv", params={"q": "SELECT 1 AS one, 'x,y' AS two"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"]
    assert csv.text.splitlines() == ["one,two", '1,"x,y"']
    assert (await http.get("/sql.csv", params={"q": "DELETE FROM runs"})).status_code == 400


async def test_alerts_and_files_say_they_are_empty(http: Http) -> None:
    assert "No alerts yet" in (await http.get("/alerts")).text
    assert "No files yet" in (await http.get("/files")).text
    response = await http.get("/api/v1/alerts")
    assert response.status_code == 200 and response.json() == []
