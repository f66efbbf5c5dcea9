"""The audit endpoints over HTTP, answered by a real auditor on a real DuckDB file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.web.app import create_app
from tests.helpers import eventually

Http = AsyncTestClient[Any]
PAIR = WorkflowSpec("t_api_pair", (TaskSpec("first", "noop"), TaskSpec("second", "noop", depends_on=("first",))))


@pytest.fixture
async def http(nats_url: str, audited_system: None) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def finished_run(nats_url: str, http: Http) -> str:
    async with await Client.connect(nats_url) as client:
        await client.apply(PAIR)
        run_id = await client.submit(PAIR.name)
        await client.wait(run_id, timeout=20)

    async def recorded() -> bool:
        response = await http.post("/api/v1/sql", json={"sql": f"SELECT status FROM runs WHERE run_id = '{run_id}'"})
        assert response.status_code == 200, response.text
        return response.json()["rows"] == [["succeeded"]]

    await eventually(recorded, timeout=10)
    return run_id


async def test_sql_answers_columns_and_rows(nats_url: str, http: Http) -> None:
    run_id = await finished_run(nats_url, http)
    response = await http.post(
        "/api/v1/sql", json={"sql": f"SELECT task, attempts FROM tasks WHERE run_id = '{run_id}' ORDER BY task"}
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["columns"], body["rows"], body["truncated"]) == (
        ["task", "attempts"],
        [["first", 1], ["second", 1]],
        False,
    )


async def test_a_refused_statement_is_a_400_with_the_reason(http: Http) -> None:
    response = await http.post("/api/v1/sql", json={"sql": "DROP TABLE runs"})
    assert response.status_code == 400
    assert response.json()["refused"] is True and "read-only" in response.json()["detail"]
    both = await http.post("/api/v1/sql", json={"sql": "SELECT 1", "saved": "failures"})
    assert both.status_code == 400


async def test_saved_queries_are_listed_and_run_by_name(http: Http) -> None:
    listed = await http.get("/api/v1/sql/saved")
    assert "failures" in [q["name"] for q in listed.json()]
    response = await http.post("/api/v1/sql", json={"saved": "failures"})
    assert response.status_code == 200 and response.json()["columns"][0] == "workflow"
    unknown = await http.post("/api/v1/sql", json={"saved": "nope"})
    assert unknown.status_code == 400 and "no saved query named 'nope'" in unknown.json()["detail"]


async def test_summary_and_task_audit_of_a_run(nats_url: str, http: Http) -> None:
    run_id = await finished_run(nats_url, http)
    summary = (await http.get(f"/api/v1/runs/{run_id}/summary")).json()
    assert summary["critical_path"] == ["first", "second"] and summary["status"] == "succeeded"
    audit = (await http.get(f"/api/v1/runs/{run_id}/tasks/second/audit")).json()
    assert [a["attempt"] for a in audit["attempts"]] == [1] and audit["next"] is None
    assert (await http.get("/api/v1/runs/NOSUCHRUN/summary")).status_code == 404
