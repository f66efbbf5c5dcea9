"""The scheduler on a real nats-server: each tick fires once across engines, catch-up after downtime, overlap
policies, and the schedule switch."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.model import Catchup, Overlap, TaskSpec, Trigger, WorkflowSpec
from tests.helpers import eventually, stream_messages


def every_second(name: str, **trigger: Any) -> WorkflowSpec:
    return WorkflowSpec(name, (TaskSpec("a", "noop"),), triggers=(Trigger(cron="* * * * * *", **trigger),))


async def fired(client: Client, workflow: str) -> list[dict[str, Any]]:
    """The workflow's runs, by logical time."""
    runs = await client.runs_list(workflow=workflow, limit=10_000)
    return sorted(runs, key=lambda r: r["logical_time"])


async def test_every_second_fires_each_tick_once_with_two_engines(nats_url: str, client: Client) -> None:
    # catchup all: a tick late past its grace on a loaded machine still fires, so a gap would be a real miss.
    spec = every_second("t_sched_two_engines", catchup=Catchup.ALL)
    async with System(nats_url, queues=[], engine_id="second-engine"):
        await client.apply(spec)

        async def six() -> list[dict[str, Any]]:
            runs = await fired(client, spec.name)
            assert len(runs) >= 6
            return runs

        runs = await eventually(six, timeout=20)
    ticks = [r["logical_time"] for r in runs]
    assert ticks == [ticks[0] + i for i in range(len(ticks))], "a tick missed or fired twice"
    assert all(r["trigger"] == "cron" for r in runs)
    for run in runs:  # one submission stored per run, whichever engine fired it
        inputs = await stream_messages(
            client.js, S.EVENTS, S.event_subject(S.partition_of(run["run_id"]), run["run_id"])
        )
        assert len([m for m in inputs if b"run.submitted" in m.data]) == 1


class Clock:
    """Real time moved by `offset` seconds: the scheduler of a System built with it lives at another time."""

    def __init__(self, at: dt.datetime) -> None:
        self.offset = at.timestamp() - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset

    def move_to(self, at: dt.datetime) -> None:
        self.offset = at.timestamp() - time.time()


@asynccontextmanager
async def engine_at(nats_url: str, clock: Callable[[], float]) -> AsyncIterator[System]:
    async with System(nats_url, concurrency=8, clock=clock, engine_id="clocked") as system:
        yield system


HOUR = 3600.0
NOON = dt.datetime(2026, 11, 23, 9, 59, 58, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [(Catchup.NONE, []), (Catchup.LATEST, ["12:00"]), (Catchup.ALL, ["10:00", "11:00", "12:00"])],
)
async def test_a_restart_across_ticks_fires_what_catchup_says(
    nats_url: str, catchup: Catchup, expected: list[str]
) -> None:
    spec = WorkflowSpec(
        "t_sched_catchup", (TaskSpec("a", "noop"),), triggers=(Trigger(cron="0 * * * *", catchup=catchup),)
    )
    clock = Clock(NOON)
    async with engine_at(nats_url, clock), await Client.connect(nats_url) as client:
        await client.apply(spec)
        await eventually(lambda: _tick_of(client, spec.name), timeout=10)  # the scheduler has seen it
    clock.move_to(dt.datetime(2026, 11, 23, 12, 30, tzinfo=dt.UTC))  # down across 10:00, 11:00 and 12:00
    async with engine_at(nats_url, clock), await Client.connect(nats_url) as client:

        async def caught_up() -> tuple[bool, list[str]]:
            view = (await client.schedule(spec.name))["triggers"][0]
            assert view["skipped"] + len(expected) == 3
            runs = await fired(client, spec.name)
            assert len(runs) == len(expected)
            return True, [dt.datetime.fromtimestamp(r["logical_time"], dt.UTC).strftime("%H:%M") for r in runs]

        assert (await eventually(caught_up, timeout=10))[1] == expected


async def _tick_of(client: Client, workflow: str) -> float | None:
    state = await client.schedules.get(workflow)
    return state.trigger("cron").tick


async def test_the_switch_stops_firing_and_resumes_without_a_burst(client: Client) -> None:
    spec = every_second("t_sched_switch", catchup=Catchup.ALL)  # catchup all would burst if off time counted
    await client.apply(spec)
    await eventually(lambda: _count(client, spec.name, 2), timeout=10)
    await client.toggle_schedule(spec.name, False)
    off_at = time.time()
    before = len(await fired(client, spec.name))
    # Off for three ticks; what fired meanwhile could only be a tick already under way when it was switched.
    await eventually(lambda: time.time() > off_at + 3, timeout=5, interval=0.1)
    assert len(await fired(client, spec.name)) <= before + 1
    on = await client.toggle_schedule(spec.name, True)
    await eventually(lambda: _count(client, spec.name, before + 3), timeout=10)
    runs = await fired(client, spec.name)
    during = [r for r in runs if off_at + 1 < r["logical_time"] <= (on["changed_at"] or 0)]
    assert during == [], "ticks of the time it was off fired"


async def _count(client: Client, workflow: str, n: int) -> bool:
    return len(await fired(client, workflow)) >= n


SLOW = TaskSpec("slow", "sleep", payload={"seconds": 1.6})


def overlapping(name: str, overlap: Overlap) -> WorkflowSpec:
    return WorkflowSpec(name, (SLOW,), triggers=(Trigger(cron="* * * * * *", overlap=overlap),))


async def test_each_overlap_policy(client: Client) -> None:
    specs = {policy: overlapping(f"t_overlap_{policy.value}", policy) for policy in Overlap}
    for spec in specs.values():
        await client.apply(spec)

    async def enough() -> dict[Overlap, list[dict[str, Any]]]:
        runs = {p: await fired(client, s.name) for p, s in specs.items()}
        done = {p: [r for r in rs if r["status"] in ("succeeded", "cancelled")] for p, rs in runs.items()}
        assert all(len(d) >= 3 for d in done.values()), {p.value: len(d) for p, d in done.items()}
        return runs

    runs = await eventually(enough, timeout=30)
    views = {p: (await client.schedule(s.name))["triggers"][0] for p, s in specs.items()}

    def overlaps(rs: list[dict[str, Any]]) -> bool:
        spans = sorted((r["started_at"], r["finished_at"] or float("inf")) for r in rs if r["started_at"])
        return any(b[0] < a[1] for a, b in itertools.pairwise(spans))

    assert overlaps(runs[Overlap.ALLOW]) and views[Overlap.ALLOW]["skipped"] == 0
    assert not overlaps(runs[Overlap.SKIP]) and views[Overlap.SKIP]["skipped"] > 0
    assert "overlap: skip" in views[Overlap.SKIP]["last_skip"]
    # buffer_one: sequential too, and a buffered tick starts after its time, once the one before ended.
    buffered = [r for r in runs[Overlap.BUFFER_ONE] if r["started_at"]]
    assert not overlaps(buffered) and views[Overlap.BUFFER_ONE]["skipped"] > 0
    assert any(r["created_at"] - r["logical_time"] > 0.5 for r in buffered)
    cancelled = [r for r in runs[Overlap.CANCEL_PREVIOUS] if r["status"] == "cancelled"]
    assert cancelled and all("overlap: cancel_previous" in (r["error"] or "") for r in cancelled)
    for spec in specs.values():
        await client.toggle_schedule(spec.name, False)
