"""Runs: `/runs` (filtered list, newest first) and `/runs/{id}` (the DAG coloured live, tasks, run control)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEvent, Template

from jetdag.engine.client import Client
from jetdag.web.live import Hub, fragment_stream

from .common import RUN_STATES, load_run, progress_view, render, run_context, run_row, workflow_names

LIST_LIMIT = 100


async def _runs(client: Client, workflow: str | None, status: str | None) -> list[dict[str, Any]]:
    return [run_row(r) for r in await client.runs_list(workflow=workflow, status=status, limit=LIST_LIMIT)]


@get("/runs", include_in_schema=False)
async def runs_page(
    state: State, workflow: FromQuery[str | None] = None, status: FromQuery[str | None] = None
) -> Template:
    client: Client = state.client
    workflow, status = workflow or None, status or None
    context = {
        "runs": await _runs(client, workflow, status),
        "workflow": workflow or "",
        "status": status or "",
        "workflows": await workflow_names(client),
        "states": RUN_STATES,
    }
    return Template(template_name="runs.html", context=context)


@get("/live/runs", include_in_schema=False)
async def runs_live(
    state: State,
    request: Request[Any, Any, Any],
    workflow: FromQuery[str | None] = None,
    status: FromQuery[str | None] = None,
) -> ServerSentEvent:
    """The runs table re-rendered after step records (at most once a second: a busy system steps a lot)."""
    client: Client = state.client
    hub: Hub = state.hub
    workflow, status = workflow or None, status or None

    async def table() -> str:
        return render(request, "_runs_table.html", {"runs": await _runs(client, workflow, status)})

    return ServerSentEvent(fragment_stream(hub, table, event="runs", workflow=workflow, min_interval=1.0))


@get("/runs/{run_id:str}", include_in_schema=False)
async def run_page(state: State, run_id: FromPath[str]) -> Template:
    hub: Hub = state.hub
    view, spec = await load_run(state.client, run_id)
    context = run_context(run_id, view, spec, hub.progress_of(run_id))
    # An unknown id is a 404, but the page still listens: a run just submitted appears once its engine takes it.
    return Template(template_name="run.html", context=context, status_code=200 if view else 404)


@get("/live/runs/{run_id:str}", include_in_schema=False)
async def run_live(state: State, request: Request[Any, Any, Any], run_id: FromPath[str]) -> ServerSentEvent:
    """The run's live fragment (status, controls, DAG, tasks), sent at once and after each of its step records;
    between steps, `progress` events carry the tasks' latest progress (spans swapped in by id)."""
    client: Client = state.client
    hub: Hub = state.hub

    async def fragment() -> str | None:
        view, spec = await load_run(client, run_id)
        if view is None:
            return None
        return render(request, "_run_live.html", run_context(run_id, view, spec, hub.progress_of(run_id)))

    async def progress(moved: dict[str, dict[str, Any] | None]) -> str:
        shown = [(task, progress_view(p)) for task, p in moved.items()]
        return render(request, "_progress_oob.html", {"moved": shown})

    return ServerSentEvent(fragment_stream(hub, fragment, event="run", run=run_id, progress=progress))
