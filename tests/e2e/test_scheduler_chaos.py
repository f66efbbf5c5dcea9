"""`kill -9` of an engine while schedules fire: every tick still starts exactly one run.

Two `jetdag engine` processes share the partitions; every-second schedules fire on both (each the owner of
some workflows, the backup of the others). One engine is killed; the other fires its ticks as their backup,
then takes its partitions over, and every run reaches the end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.model import Catchup, TaskSpec, Trigger, WorkflowSpec
from tests.e2e.test_engine_chaos import Engines, lease_holders
from tests.helpers import eventually, stream_messages

pytestmark = pytest.mark.chaos

SCHEDULES = 8


def every_second(i: int) -> WorkflowSpec:
    # catchup all: a tick late past its grace on a loaded machine fires anyway, so a gap is a real loss.
    trigger = Trigger(cron="* * * * * *", catchup=Catchup.ALL)
    return WorkflowSpec(f"t_chaos_sched_{i}", (TaskSpec("a", "noop"),), triggers=(trigger,))


async def ticks(client: Client, workflow: str) -> list[dict[str, Any]]:
    return sorted(await client.runs_list(workflow=workflow, limit=1000), key=lambda r: r["logical_time"])


async def test_killing_an_engine_loses_and_doubles_no_tick(nats_url: str, tmp_path: Path) -> None:
    engines = Engines(nats_url, tmp_path)
    specs = [every_second(i) for i in range(SCHEDULES)]
    try:
        victim = engines.start("chaos-a")
        engines.start("chaos-b")
        async with System(nats_url, engine=False, concurrency=64), await Client.connect(nats_url) as client:
            await eventually(lambda: _split(client), timeout=60)
            for spec in specs:
                await client.apply(spec)
            await eventually(lambda: _each_fired(client, specs, 3), timeout=30)
            Engines.kill9(victim)
            killed = time.time()
            await eventually(lambda: _each_fired_after(client, specs, killed + 10), timeout=60)
            stop = time.time()
            for spec in specs:
                await client.toggle_schedule(spec.name, False)
            submitted = [
                m for m in await stream_messages(client.js, S.EVENTS, "jd.evt.*.*") if b"run.submitted" in m.data
            ]
            assert len(submitted) == len({m.subject for m in submitted})  # each run's submission stored once
            for spec in specs:
                runs = [r for r in await ticks(client, spec.name) if r["logical_time"] <= stop - 3]
                seconds = [r["logical_time"] for r in runs]
                assert seconds == [seconds[0] + i for i in range(len(seconds))], f"{spec.name}: a tick lost or doubled"
                for run in runs:  # and each ran to its end on the survivor
                    view = await client.wait(run["run_id"], timeout=30)
                    assert view["status"] == "succeeded", view
    except BaseException:
        print(engines.log_text())
        raise
    finally:
        engines.stop_all()


async def _split(client: Client) -> bool:
    holders = {engine for engine, _ in (await lease_holders(client.js)).values()}
    return holders == {"chaos-a", "chaos-b"}


async def _each_fired(client: Client, specs: list[WorkflowSpec], n: int) -> bool:
    counts = await asyncio.gather(*(ticks(client, s.name) for s in specs))
    return all(len(c) >= n for c in counts)


async def _each_fired_after(client: Client, specs: list[WorkflowSpec], moment: float) -> bool:
    runs = await asyncio.gather(*(ticks(client, s.name) for s in specs))
    return all(r and r[-1]["logical_time"] >= moment for r in runs)
