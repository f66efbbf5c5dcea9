"""Run control over HTTP: cancel, pause, resume, ignore (202), rerun (201), 404 and 400, against a real engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.errors import NotFound
from jetdag.engine.handlers import Fail, TaskContext, handler
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from jetdag.web.app import create_app
from tests.helpers import eventually

Http = AsyncTestClient[Any]

_gates: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}


@handler("t_ctlapi_gate")
async def gate(ctx: TaskContext) -> str:
    started, release = _gates.setdefault(ctx.params["gate"], (asyncio.Event(), asyncio.Event()))
    started.set()
    await release.wait()
    return "released"


@handler("t_ctlapi_fail")
async def fail(ctx: TaskContext) -> None:
    raise Fail("bad input")


GATED = WorkflowSpec(
    "t_ctlapi_gated", (TaskSpec("first", "t_ctlapi_gate"), TaskSpec("second", "noop", depends_on=("first",)))
)
FAILING = WorkflowSpec(
    "t_ctlapi_failing",
    (
        TaskSpec("a", "noop"),
        TaskSpec("b", "t_ctlapi_fail", depends_on=("a",)),
        TaskSpec("c", "noop", depends_on=("b",)),
    ),
    retry=RetryPolicy(max_attempts=1),
)


@pytest.fixture
async def http(nats_url: str, system: System) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def _gated_run(client: Client, key: str) -> tuple[str, asyncio.Event]:
    await client.apply(GATED)
    started, release = _gates.setdefault(key, (asyncio.Event(), asyncio.Event()))
    run_id = await client.submit(GATED.name, {"gate": key})
    await asyncio.wait_for(started.wait(), 15)
    await _until(client, run_id, "running")  # a task can start before the run's first snapshot is saved
    return run_id, release


async def _until(client: Client, run_id: str, status: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any]:
        try:
            view = await client.status(run_id)
        except NotFound as exc:  # not saved yet
            raise AssertionError(str(exc)) from None
        assert view["status"] == status, view
        return view

    return await eventually(reached, timeout=15)


async def test_cancel_answers_202_and_the_run_is_cancelled_with_the_reason(http: Http, client: Client) -> None:
    run_id, _ = await _gated_run(client, "cancel")
    response = await http.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "wrong day"})
    assert response.status_code == 202, response.text
    assert response.json() == {"run_id": run_id, "requested": "cancel"}
    view = await _until(client, run_id, "cancelled")
    assert view["error"] == "cancelled by http: wrong day"
    # Without a body too; a cancelled run can be cancelled again, but not paused.
    assert (await http.post(f"/api/v1/runs/{run_id}/cancel")).status_code == 202
    response = await http.post(f"/api/v1/runs/{run_id}/pause")
    assert response.status_code == 400 and "already was cancelled" in response.json()["detail"]


async def test_pause_and_resume_answer_202_and_hold_then_release_the_child(http: Http, client: Client) -> None:
    run_id, release = await _gated_run(client, "pause")
    response = await http.post(f"/api/v1/runs/{run_id}/pause")
    assert (response.status_code, response.json()) == (202, {"run_id": run_id, "requested": "pause"})
    await _until(client, run_id, "paused")
    release.set()

    async def first_done() -> dict[str, Any]:
        view = await client.status(run_id)
        assert view["tasks"]["first"]["status"] == "succeeded", view
        return view

    view = await eventually(first_done, timeout=15)
    assert view["status"] == "paused" and view["tasks"]["second"]["status"] == "waiting"
    response = await http.post(f"/api/v1/runs/{run_id}/resume")
    assert (response.status_code, response.json()) == (202, {"run_id": run_id, "requested": "resume"})
    assert (await client.wait(run_id, timeout=15))["status"] == "succeeded"


async def test_ignore_and_rerun_of_a_failed_run(http: Http, client: Client) -> None:
    await client.apply(FAILING)
    run_id = await client.submit(FAILING.name)
    assert (await client.wait(run_id, timeout=15))["status"] == "failed"

    response = await http.post(f"/api/v1/runs/{run_id}/rerun", json={"from": "nosuch"})
    assert response.status_code == 400 and "no task 'nosuch'" in response.json()["detail"]
    response = await http.post(f"/api/v1/runs/{run_id}/rerun", json={"from": "b"})
    assert response.status_code == 201, response.text
    new = response.json()["run_id"]
    rerun = await client.wait(new, timeout=15)
    assert rerun["rerun_of"] == run_id and rerun["tasks"]["a"]["attempts"] == 0
    assert rerun["tasks"]["b"]["status"] == "failed", "b fails again: its handler did not change"
    assert (await http.get(f"/api/v1/runs/{new}")).json()["rerun_of"] == run_id

    response = await http.post(f"/api/v1/runs/{run_id}/tasks/a/ignore")
    assert response.status_code == 400 and "only a failed or retrying task" in response.json()["detail"]
    response = await http.post(f"/api/v1/runs/{run_id}/tasks/b/ignore", json={"reason": "known"})
    assert (response.status_code, response.json()) == (202, {"run_id": run_id, "requested": "ignore"})
    view = await _until(client, run_id, "succeeded")
    assert view["tasks"]["b"]["status"] == "ignored" and view["tasks"]["c"]["status"] == "succeeded"


@pytest.mark.parametrize("path", ["cancel", "pause", "resume", "rerun", "tasks/a/ignore"])
async def test_control_of_an_unknown_run_is_404_naming_it(http: Http, path: str) -> None:
    response = await http.post(f"/api/v1/runs/NOSUCHRUN/{path}")
    assert response.status_code == 404
    assert "NOSUCHRUN" in response.json()["detail"]


async def test_a_bad_body_is_400(http: Http, client: Client) -> None:
    await client.apply(FAILING)
    run_id = await client.submit(FAILING.name)
    await client.wait(run_id, timeout=15)
    response = await http.post(f"/api/v1/runs/{run_id}/rerun", json={"from": 3})
    assert response.status_code == 400 and "'from' must be a string" in response.json()["detail"]


async def test_the_openapi_schema_lists_the_control_paths(http: Http) -> None:
    paths = (await http.get("/schema/openapi.json")).json()["paths"]
    for verb in ("cancel", "pause", "resume", "rerun"):
        assert "post" in paths[f"/api/v1/runs/{{run_id}}/{verb}"]
    assert "post" in paths["/api/v1/runs/{run_id}/tasks/{task}/ignore"]
