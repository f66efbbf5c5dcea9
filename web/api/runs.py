"""Runs: list, one run, and starting a run of a workflow."""

from __future__ import annotations

from typing import Any

from litestar import get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody

from jetdag.engine.client import Client


@get("/api/v1/runs")
async def list_runs(
    state: State,
    workflow: FromQuery[str | None] = None,
    status: FromQuery[str | None] = None,
    limit: FromQuery[int] = 100,
) -> list[dict[str, Any]]:
    """Runs newest first, without their tasks."""
    client: Client = state.client
    return await client.runs_list(workflow=workflow, status=status, limit=max(1, min(limit, 1000)))


@get("/api/v1/runs/{run_id:str}")
async def get_run(state: State, run_id: FromPath[str]) -> dict[str, Any]:
    """The run with each task's status and attempts (the shape of `jetdag status --json`)."""
    client: Client = state.client
    return await client.status(run_id)


@post("/api/v1/workflows/{name:str}/runs")
async def start_run(state: State, name: FromPath[str], data: JSONBody[dict[str, Any] | None] = None) -> dict[str, str]:
    """Start a run of workflow `name` with the JSON body as params; answers its id (201)."""
    client: Client = state.client
    return {"run_id": await client.submit(name, data or {})}
