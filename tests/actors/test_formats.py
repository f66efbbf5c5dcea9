"""Each definition format runs end to end on a real nats-server, with templates, jobs and run config."""

from __future__ import annotations

import asyncio
import datetime as dt
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.definitions import load_file
from jetdag.engine.handlers import TaskContext, handler

_seen: dict[str, list[dict[str, Any]]] = {}
_running: dict[str, int] = {}
_peak: dict[str, int] = {}


@handler("t_fmt_report")
def report(ctx: TaskContext) -> dict[str, Any]:
    seen = {"task": ctx.task, "info": ctx.info, "job": ctx.job, "payload": ctx.payload}
    _seen.setdefault(ctx.run_id, []).append(seen)
    return {"rows": 42}


@handler("t_fmt_busy")
async def busy(ctx: TaskContext) -> None:
    _running[ctx.run_id] = _running.get(ctx.run_id, 0) + 1
    _peak[ctx.run_id] = max(_peak.get(ctx.run_id, 0), _running[ctx.run_id])
    await asyncio.sleep(0.05)  # wait-ok: a handler's simulated work
    _running[ctx.run_id] -= 1


@handler("t_fmt_stuck")
async def stuck(ctx: TaskContext) -> None:
    await asyncio.sleep(30)  # wait-ok: a handler's simulated work


@pytest.fixture
async def system(nats_url: str) -> AsyncIterator[System]:
    """A worker for the queues these workflows use besides `default`."""
    async with System(nats_url, queues=("default", "t_fmt_report"), concurrency=16, drain_timeout=1.0) as running:
        yield running


async def apply_file(client: Client, path: Path) -> str:
    [spec] = load_file(path)
    await client.apply(spec)
    return spec.name


AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


async def test_a_flowlord_toml_workflow_runs_with_its_templates_and_jobs(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "t_fmt_toml.toml"
    path.write_text(
        textwrap.dedent("""\
        [[Phase]]
        task = "t_fmt_report:extract"
        rule = "cron=0 0 1 * * *&offset=-6h"
        template = "?date={yyyy}-{mm}-{dd}T{hh}&file={meta:file}"

        [[Phase]]
        task = "t_fmt_report:load"
        dependsOn = "t_fmt_report:extract"
        template = "?rows={result:t_fmt_report:extract.rows}"
        """)
    )
    name = await apply_file(client, path)
    run_id = await client.submit(name, logical_time=AT, meta={"file": "/in/a.csv"})
    view = await client.wait(run_id, timeout=20)
    assert view["status"] == "succeeded", view
    assert [(s["job"], s["info"]) for s in _seen[run_id]] == [
        ("extract", "?date=2026-01-02T03&file=/in/a.csv"),
        ("load", "?rows=42"),
    ]


async def test_a_python_workflow_runs_with_params_rendered(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "t_fmt_python.py"
    path.write_text(
        textwrap.dedent("""\
        from jetdag.engine.workflow import Task, Workflow

        wf = Workflow(name="t_fmt_python", params={"table": "sales"})
        first = wf.add(Task("first", handler="t_fmt_report", queue="t_fmt_report"))
        second = wf.add(Task("second", handler="t_fmt_report", queue="t_fmt_report",
                             payload={"table": "{param:table}", "day": "{yyyy}{mm}{dd}"}))
        wf.set_downstream(first, second)
        """)
    )
    name = await apply_file(client, path)
    run_id = await client.submit(name, {"table": "orders"}, logical_time=AT)
    view = await client.wait(run_id, timeout=20)
    assert view["status"] == "succeeded", view
    assert _seen[run_id][1]["payload"] == {"table": "orders", "day": "20260102"}


async def test_the_flowctl_yaml_runs_with_type_as_handler(nats_url: str, tmp_path: Path) -> None:
    """FlowCtl's example as written; workers for its `etl` and `generic` types serve it."""

    @handler("etl")
    def etl(ctx: TaskContext) -> str:
        return ctx.payload["source_url"]

    @handler("generic")
    def generic(ctx: TaskContext) -> str:
        return ctx.payload["command"]

    example = Path(__file__).parent.parent / "engine" / "flowctl" / "my_workflow.yaml"
    async with (
        System(nats_url, queues=("etl", "generic"), drain_timeout=1.0),
        await Client.connect(nats_url) as client,
    ):
        await apply_file(client, example)
        view = await client.wait(await client.submit("My Workflow"), timeout=20)
    assert view["status"] == "succeeded", view
    assert view["workflow"] == "My-Workflow"


async def test_max_concurrency_bounds_the_tasks_running_at_once(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "t_fmt_limit.yaml"
    tasks = "".join(f"  - {{name: t{i}, handler: t_fmt_busy}}\n" for i in range(8))
    path.write_text(f"name: t_fmt_limit\nconfig: {{max_concurrency: 2}}\ntasks:\n{tasks}")
    run_id = await client.submit(await apply_file(client, path))
    view = await client.wait(run_id, timeout=20)
    assert view["status"] == "succeeded", view
    assert _peak[run_id] == 2


async def test_a_run_past_its_timeout_fails_and_says_so(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "t_fmt_deadline.yaml"
    path.write_text(
        "name: t_fmt_deadline\nconfig: {timeout: 500ms}\ntasks:\n"
        "  - {name: stuck, handler: t_fmt_stuck}\n  - {name: after, handler: noop, depends_on: stuck}\n"
    )
    run_id = await client.submit(await apply_file(client, path))
    view = await client.wait(run_id, timeout=20)
    assert view["status"] == "failed"
    assert view["error"] == "run timed out: not finished within its timeout of 500ms"
    assert {n: t["status"] for n, t in view["tasks"].items()} == {"stuck": "cancelled", "after": "cancelled"}
