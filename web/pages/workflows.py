"""Workflows: `/workflows` (each with its last runs as dots) and `/workflows/{name}` (definition, DAG, Run now,
its schedule's triggers, and a backfill form that previews the runs before it starts them)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
import orjson
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Body, FromPath, FromQuery
from litestar.response import ServerSentEvent, Template
from markupsafe import Markup

from jetdag.engine.client import Client
from jetdag.engine.definitions.export import to_yaml
from jetdag.engine.errors import BackfillTooLarge, NotFound
from jetdag.engine.firing import BackfillError
from jetdag.engine.model import WorkflowSpec
from jetdag.engine.schedules import has_schedule
from jetdag.web import dag
from jetdag.web.api.backfill import BackfillRequest, run_backfill
from jetdag.web.live import Hub, fragment_stream

from .common import deps, render, run_row, triggers, when

DOTS = 12  # last runs shown per workflow
RECENT_RUNS = 10  # on a workflow's own page
RECENT = 500  # runs read to find them: one scan for every workflow instead of one per workflow
FIRE_RUNS = 3  # run links shown per trigger for its last fire (a batch may start hundreds)
BACKFILL_ROWS = 100  # runs listed by a backfill's preview; its ends are shown, the middle counted


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
        "schedule": None,
        "backfill": backfill_form(spec),
    }
    if has_schedule(spec):
        context.update(schedule_section(await client.schedule(spec.name)))
    return Template(template_name="workflow.html", context=context)


@post("/workflows/{name:str}/schedule", include_in_schema=False, status_code=200)
async def workflow_schedule(state: State, name: FromPath[str], section: FromQuery[bool] = False) -> Template:
    """The dashboard's schedule switch: flips it (`POST /api/v1/schedules/{name}/toggle`), answers the switch's
    fragment, or with `section` the workflow page's whole schedule (the triggers' next fires change too)."""
    client: Client = state.client
    schedule = await client.toggle_schedule(name, by="dashboard")
    if section:
        return Template(template_name="_schedule_section.html", context=schedule_section(schedule))
    return Template(template_name="_schedule.html", context={"s": schedule})


def _clock(ts: float | None) -> str:
    """A tick in UTC to the minute, where crons tick; to the second for a cron with a seconds field."""
    text = when(ts)
    return text[:16] if text.endswith(":00") else text


def schedule_section(schedule: dict[str, Any]) -> dict[str, Any]:
    """What _schedule_section.html shows: the switch's state and one row per trigger, times for people."""
    rows = []
    for t in schedule.get("triggers", []):
        runs = list(t.get("runs") or [])
        rows.append(
            {
                **t,
                "next_text": (t.get("next_fire") or "").replace("T", " "),  # in the trigger's own time zone
                "last_text": when(t.get("last_fire")),
                "buffered_text": when(t.get("buffered")),
                "shown_runs": runs[:FIRE_RUNS],
                "more_runs": max(0, len(runs) - FIRE_RUNS),
            }
        )
    return {"schedule": schedule, "s": schedule, "trigger_rows": rows}


def backfill_form(spec: WorkflowSpec) -> dict[str, Any]:
    """The backfill form's choices and first values: yesterday in UTC, stepped by the cron when there is one."""
    clocks = list(dict.fromkeys(t.key("cron") for t in spec.triggers if t.cron))
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    return {
        "clocks": clocks,
        "start": f"{yesterday.isoformat()}T00:00",
        "end": f"{yesterday.isoformat()}T23:59",
        "by": "" if clocks else "day",
    }


class _BadLine(ValueError):
    """A line of the form's key=value lines that is not one; the message names it."""


def _pairs(text: str, field: str) -> dict[str, Any]:
    """`key=value` lines as a map, values as JSON when they parse as JSON (like `jetdag submit -m`)."""
    out: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, raw = line.partition("=")
        if not sep or not key.strip():
            raise _BadLine(f"{field} line {number}: {line.strip()!r} is not key=value")
        try:
            out[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key.strip()] = raw.strip()
    return out


def _shown(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs a fragment lists, each with its time for people; past BACKFILL_ROWS, the first and last
    halves around a `{"gap": n}` row (a page of 10,000 rows helps nobody; the API lists them all)."""
    rows = [{**r, "when": _clock(r["logical_time"])} for r in runs]
    if len(rows) <= BACKFILL_ROWS:
        return rows
    half = BACKFILL_ROWS // 2
    return [*rows[:half], {"gap": len(rows) - 2 * half}, *rows[-half:]]


@post("/workflows/{name:str}/backfill", include_in_schema=False, status_code=200)
async def workflow_backfill(
    state: State, name: FromPath[str], data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Template:
    """The backfill form's answer in place (`POST /api/v1/workflows/{name}/backfill` underneath): with `dry_run`
    the runs it would start and a button that starts them, without it the runs it started; or why it cannot."""
    client: Client = state.client
    form = {k: data.get(k, "") for k in ("from", "to", "by", "trigger", "meta")}
    context: dict[str, Any] = {"name": name, "form": form, "error": None}
    try:
        request = msgspec.convert(
            {"from": form["from"], "to": form["to"], "by": form["by"] or None, "trigger": form["trigger"] or None,
             "meta": _pairs(form["meta"], "meta") or None, "dry_run": data.get("dry_run") == "true"},
            BackfillRequest,
        )  # fmt: skip
        answer = await run_backfill(client, name, request)
    except ValidationException as exc:
        context["error"] = exc.detail
    except (msgspec.ValidationError, _BadLine, BackfillError, BackfillTooLarge, NotFound) as exc:
        context["error"] = str(exc)
    else:
        runs = answer["runs"] if request.dry_run else [r for r in answer["runs"] if not r["exists"]]
        first, last = (_clock(answer["runs"][i]["logical_time"]) for i in (0, -1)) if answer["runs"] else ("", "")
        context.update(answer, rows=_shown(runs), total=len(answer["runs"]), first=first, last=last)
    return Template(template_name="_backfill.html", context=context)


@get("/live/workflows/{name:str}", include_in_schema=False)
async def workflow_live(state: State, request: Request[Any, Any, Any], name: FromPath[str]) -> ServerSentEvent:
    """The workflow's recent runs, re-rendered after step records of its runs (at most once a second)."""
    client: Client = state.client
    hub: Hub = state.hub
    spec, _ = await _spec(client, name)  # its id: the name in the URL may be the title, runs carry the id

    async def table() -> str:
        return render(request, "_runs_table.html", {"runs": await _recent_runs(client, spec.name)})

    return ServerSentEvent(fragment_stream(hub, table, event="runs", workflow=spec.name, min_interval=1.0))
