"""Workflows: `/workflows` (each with its last runs as dots) and `/workflows/{name}` (definition, DAG, Run now)."""

from __future__ import annotations

from typing import Any

import orjson
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import ServerSentEvent, Template
from markupsafe import Markup

from jetdag.engine.client import Client
from jetdag.engine.definitions.export import to_yaml
from jetdag.engine.errors import NotFound
from jetdag.engine.model import WorkflowSpec
from jetdag.engine.schedules import has_schedule
from jetdag.web import dag
from jetdag.web.live import Hub, fragment_stream

from .common import deps, render, run_row, triggers

DOTS = 12  # last runs shown per workflow
RECENT_RUNS = 10  # on a workflow's own page
RECENT = 500  # runs read to find them: one scan for every workflow instead of one per workflow


async def _rows(client: Client) -> list[dict[str, Any]]:
    recent: dict[str, list[dict[str, Any]]] = {}
    for r in await client.runs_list(limit=RECENT):
        dots = recent.setdefault(r["workflow"], [])
        if len(dots) < DOTS:
            dots.append(run_row(r))
    rows = []
    for name in await client.defs.names():
        try:
            spec, version = await client.defs.get(name)
        except NotFound:
            continue  # deleted between the listing and the read
        rows.append(
            {
                "schedule": await client.schedule(spec.name) if has_schedule(spec) else None,
                "name": spec.name,
                "title": spec.title or spec.name,
                "description": spec.description,
                "triggers": triggers(spec),
                "tasks": len(spec.tasks),
                "version": version,
                "runs": list(reversed(recent.get(spec.name, []))),  # oldest left, newest right, like a timeline
            }
        )
    return rows


@get("/workflows", include_in_schema=False)
async def workflows_page(state: State) -> Template:
    return Template(template_name="workflows.html", context={"workflows": await _rows(state.client)})


@get("/live/workflows", include_in_schema=False)
async def workflows_live(state: State, request: Request[Any, Any, Any]) -> ServerSentEvent:
    client: Client = state.client
    hub: Hub = state.hub

    async def table() -> str:
        return render(request, "_workflows_table.html", {"workflows": await _rows(client)})

    return ServerSentEvent(fragment_stream(hub, table, event="workflows", min_interval=2.0))


def definition(spec: WorkflowSpec) -> tuple[str, str]:
    """The definition as YAML when YAML can say it all, else as the stored JSON; and which it is."""
    try:
        return to_yaml(spec), "yaml"
    except ValueError:
        return orjson.dumps(spec.to_dict(), option=orjson.OPT_INDENT_2, default=str).decode(), "json"


def param_value(value: Any) -> str:
    """A param's default as the form shows it: text as is, anything else as JSON (parsed back on submit)."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


async def _spec(client: Client, name: str) -> tuple[WorkflowSpec, int]:
    try:
        return await client.defs.get(name)
    except NotFound:
        raise NotFoundException(f"no workflow {name!r}") from None


async def _recent_runs(client: Client, workflow: str) -> list[dict[str, Any]]:
    return [run_row(r) for r in await client.runs_list(workflow=workflow, limit=RECENT_RUNS)]


@get("/workflows/{name:str}", include_in_schema=False)
async def workflow_page(state: State, name: FromPath[str]) -> Template:
    client: Client = state.client
    spec, version = await _spec(client, name)
    text, fmt = definition(spec)
    runs = await _recent_runs(client, spec.name)
    context = {
        "spec": spec,
        "title": spec.title or spec.name,
        "version": version,
        "triggers": triggers(spec),
        "definition": text,
        "format": fmt,
        "svg": Markup(dag.svg(dag.layout(deps(spec)))),  # dag.svg escapes every name
        "params": [(k, param_value(v)) for k, v in spec.params.items()],
        "runs": runs,
        "schedule": await client.schedule(spec.name) if has_schedule(spec) else None,
    }
    return Template(template_name="workflow.html", context=context)


@post("/workflows/{name:str}/schedule", include_in_schema=False, status_code=200)
async def workflow_schedule(state: State, name: FromPath[str]) -> Template:
    """The dashboard's schedule switch: flips it (`POST /api/v1/schedules/{name}/toggle`), answers the fragment."""
    client: Client = state.client
    schedule = await client.toggle_schedule(name, by="dashboard")
    return Template(template_name="_schedule.html", context={"s": schedule})


@get("/live/workflows/{name:str}", include_in_schema=False)
async def workflow_live(state: State, request: Request[Any, Any, Any], name: FromPath[str]) -> ServerSentEvent:
    """The workflow's recent runs, re-rendered after step records of its runs (at most once a second)."""
    client: Client = state.client
    hub: Hub = state.hub
    spec, _ = await _spec(client, name)  # its id: the name in the URL may be the title, runs carry the id

    async def table() -> str:
        return render(request, "_runs_table.html", {"runs": await _recent_runs(client, spec.name)})

    return ServerSentEvent(fragment_stream(hub, table, event="runs", workflow=spec.name, min_interval=1.0))
