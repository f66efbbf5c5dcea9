"""Backfills and flowlord's batching on a real nats-server: the runs a schedule would have started, once each."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.definitions import load_file
from jetdag.engine.firing import Firing, fire_id
from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.model import TaskSpec, Trigger, WorkflowSpec
from tests.helpers import eventually

FLOWLORD = Path(__file__).parents[1] / "engine" / "flowlord"
HOURLY = WorkflowSpec("t_backfill_hourly", (TaskSpec("a", "noop"),), triggers=(Trigger(cron="0 * * * *"),))
START, END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 2, 23, tzinfo=dt.UTC)


async def test_a_48_tick_hourly_backfill_starts_48_runs_and_then_none(client: Client) -> None:
    await client.apply(HOURLY)
    preview = await client.backfill(HOURLY.name, START, END, dry_run=True)
    assert len(preview) == 48 and not any(r["exists"] for r in preview)
    assert (await client.runs_list(workflow=HOURLY.name)) == []  # a dry run starts nothing
    plan = await client.backfill(HOURLY.name, START, END)
    assert [r["run_id"] for r in plan] == [r["run_id"] for r in preview]
    assert len({r["run_id"] for r in plan}) == 48
    first = plan[0]
    # The scheduler gives the tick the same id: a backfill over fired ticks starts nothing twice.
    assert first["run_id"] == fire_id(HOURLY.name, Firing(HOURLY.triggers[0], "cron", START.timestamp(), 0.0))
    await eventually(lambda: _all_done(client, HOURLY.name, 48), timeout=30)
    again = await client.backfill(HOURLY.name, START, END)
    assert all(r["exists"] for r in again)
    assert len(await client.runs_list(workflow=HOURLY.name, limit=1000)) == 48
    view = await client.status(first["run_id"])
    assert view["trigger"] == "backfill" and view["logical_time"] == START.timestamp()


async def _all_done(client: Client, workflow: str, n: int) -> bool:
    runs = await client.runs_list(workflow=workflow, limit=1000)
    return len(runs) == n and all(r["status"] == "succeeded" for r in runs)


@handler("worker")
def worker(ctx: TaskContext) -> dict[str, Any]:
    """flowlord's `worker` topic in its README's batching examples: says what it was given."""
    return {"info": ctx.info}


@pytest.mark.parametrize(
    ("fixture", "runs", "infos"),
    [
        (
            "batch_lastweek_quoted.toml", 8,
            [f"?day=2026-11-{d:02}" for d in range(16, 24)],
        ),
        (
            "batch_meta.toml", 3,
            [f"?name={n}&value={v}&day=2026-11-23" for n, v in (("a", 1), ("b", 2), ("c", 3))],
        ),
        (
            "batch_meta_file.toml", 2,
            ["?name=x&value=10&day=2026-11-23", "?name=y&value=20&day=2026-11-23"],
        ),
    ],
)  # fmt: skip
async def test_flowlords_batches_make_the_tasks_its_readme_says(
    nats_url: str, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture: str, runs: int,
    infos: list[str],
) -> None:  # fmt: skip
    shutil.copy(FLOWLORD / fixture, tmp_path / fixture)
    (tmp_path / "data.json").write_bytes(orjson.dumps([{"name": "x", "value": 10}, {"name": "y", "value": 20}]))
    monkeypatch.chdir(tmp_path)  # meta-file=data.json is read relative to the working directory
    [spec] = load_file(tmp_path / fixture)
    await client.apply(spec)
    tick = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    async with System(nats_url, engine=False, queues=["worker"]):
        plan = await client.backfill(spec.name, tick, tick, by="day")
        assert len(plan) == runs
        finals = [await client.wait(r["run_id"], timeout=20) for r in plan]
    assert [f["status"] for f in finals] == ["succeeded"] * runs
    (task,) = {name for f in finals for name in f["tasks"]}
    assert sorted(f["tasks"][task]["result"]["info"] for f in finals) == sorted(infos)
