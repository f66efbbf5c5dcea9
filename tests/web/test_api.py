"""The HTTP API in-process (Litestar's AsyncTestClient runs the app's lifespan) against a real engine and worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx import Response
from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.subjects import DEFAULT_PARTITIONS
from jetdag.web.app import create_app
from tests.helpers import eventually

Http = AsyncTestClient[Any]


def _echo(word: str) -> dict[str, Any]:
    return {"argv": ["echo", word]}


DIAMOND = WorkflowSpec(
    "diamond",
    (
        TaskSpec("a", "command", payload=_echo("extract")),
        TaskSpec("b", "command", payload=_echo("left"), depends_on=("a",)),
        TaskSpec("c", "command", payload=_echo("right"), depends_on=("a",)),
        TaskSpec("d", "command", payload=_echo("load"), depends_on=("b", "c")),
    ),
)


@pytest.fixture
async def http(nats_url: str, system: System) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


@pytest.fixture
async def diamond(client: Client) -> WorkflowSpec:
    await client.apply(DIAMOND)
    return DIAMOND


async def _start(http: Http, workflow: str, params: dict[str, Any] | None = None) -> str:
    response = await http.post(f"/api/v1/workflows/{workflow}/runs", json=params or {})
    assert response.status_code == 201, response.text
    run_id = response.json()["run_id"]
    assert isinstance(run_id, str)
    return run_id


async def test_health_is_ok_once_the_engine_owns_every_partition(http: Http) -> None:
    async def healthy() -> Response:
        response = await http.get("/api/v1/health")
        assert response.status_code == 200, response.text
        assert response.json()["workers"] >= 1  # the worker's first heartbeat may still be on its way
        return response

    response: Response = await eventually(healthy)
    body = response.json()
    assert body["status"] == "ok"
    assert body["nats"] is True
    assert body["engine"] == {"partitions": DEFAULT_PARTITIONS, "owned": DEFAULT_PARTITIONS}


async def test_health_is_503_starting_while_no_engine_runs(nats_url: str) -> None:
    # A worker alone declares the streams and buckets but owns no partition.
    async with (
        System(nats_url, engine=False, drain_timeout=2.0),
        AsyncTestClient(app=create_app(nats_url)) as http,
    ):
        response = await http.get("/api/v1/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "starting"
    assert body["engine"]["owned"] == 0


async def test_posting_a_run_answers_201_with_its_id_and_the_params_reach_the_run(
    http: Http, client: Client, diamond: WorkflowSpec
) -> None:
    run_id = await _start(http, diamond.name, {"n": 3, "name": "x"})
    assert len(run_id) == 26
    view = await client.wait(run_id, timeout=15)
    assert view["status"] == "succeeded"
    assert view["params"] == {"n": 3, "name": "x"}


async def test_posting_a_run_without_a_body_starts_it_with_no_params(
    http: Http, client: Client, diamond: WorkflowSpec
) -> None:
    response = await http.post(f"/api/v1/workflows/{diamond.name}/runs")
    assert response.status_code == 201, response.text
    view = await client.wait(response.json()["run_id"], timeout=15)
    assert view["params"] == {}


async def test_posting_a_run_of_an_unknown_workflow_is_404_naming_it(http: Http) -> None:
    response = await http.post("/api/v1/workflows/nosuch/runs", json={})
    assert response.status_code == 404
    assert "nosuch" in response.json()["detail"]


async def test_a_run_answers_the_same_object_as_client_status(
    http: Http, client: Client, diamond: WorkflowSpec
) -> None:
    run_id = await _start(http, diamond.name)
    await client.wait(run_id, timeout=15)
    response = await http.get(f"/api/v1/runs/{run_id}")
    assert response.status_code == 200
    body = response.json()
    assert body == await client.status(run_id)
    assert body["run_id"] == run_id
    assert body["workflow"] == "diamond"
    assert body["status"] == "succeeded"
    assert {name: (t["status"], t["attempts"]) for name, t in body["tasks"].items()} == {
        name: ("succeeded", 1) for name in "abcd"
    }


async def test_an_unknown_run_is_404_with_a_json_detail_naming_it(http: Http) -> None:
    response = await http.get("/api/v1/runs/NOSUCHRUN")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert "NOSUCHRUN" in response.json()["detail"]


async def test_the_run_list_is_newest_first_without_tasks_and_filters(
    http: Http, client: Client, diamond: WorkflowSpec
) -> None:
    first = await _start(http, diamond.name)
    second = await _start(http, diamond.name)
    for run_id in (first, second):
        await client.wait(run_id, timeout=15)

    response = await http.get("/api/v1/runs")
    assert response.status_code == 200
    runs = response.json()
    assert [r["run_id"] for r in runs] == [second, first]
    assert all("tasks" not in r for r in runs)
    assert runs[0] == {k: v for k, v in (await client.status(second)).items() if k != "tasks"}

    limited = (await http.get("/api/v1/runs", params={"limit": 1})).json()
    assert [r["run_id"] for r in limited] == [second]
    assert (await http.get("/api/v1/runs", params={"workflow": "other"})).json() == []
    assert (await http.get("/api/v1/runs", params={"status": "failed"})).json() == []
    succeeded = (await http.get("/api/v1/runs", params={"status": "succeeded"})).json()
    assert {r["run_id"] for r in succeeded} == {first, second}


async def test_the_dashboard_page_is_html_listing_the_run(http: Http, client: Client, diamond: WorkflowSpec) -> None:
    run_id = await _start(http, diamond.name)
    await client.wait(run_id, timeout=15)
    response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text
    assert run_id in response.text


async def test_the_openapi_schema_lists_the_api_paths(http: Http) -> None:
    response = await http.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/v1/health",
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/workflows/{name}/runs",
    ):
        assert path in paths, sorted(paths)
    assert "post" in paths["/api/v1/workflows/{name}/runs"]
