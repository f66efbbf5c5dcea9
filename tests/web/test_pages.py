"""Dashboard pages rendered in-process (Litestar's AsyncTestClient) against a real engine and worker, and the
live hub's fan-out against a real nats-server. The browser tests (tests/browser/) check the live updates."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.web.app import create_app
from jetdag.web.live import Hub

Http = AsyncTestClient[Any]

PAGED = WorkflowSpec(
    "paged",
    (
        TaskSpec("first", "noop"),
        TaskSpec("left", "command", payload={"argv": ["echo", "left-output"]}, depends_on=("first",)),
        TaskSpec("right", "noop", depends_on=("first",)),
        TaskSpec("last", "noop", depends_on=("left", "right")),
    ),
    description="a diamond for the pages",
    params={"day": "today", "n": 3},
)


@pytest.fixture
async def http(nats_url: str, system: System) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def test_every_page_renders_a_finished_run(http: Http, client: Client) -> None:
    await client.apply(PAGED)
    run_id = await client.submit("paged", {"day": "2026-11-23", "n": 3})
    await client.wait(run_id, timeout=15)

    page = (await http.get(f"/runs/{run_id}")).text
    nodes = {task: status for status, task in re.findall(r'<g class="node s-(\w+)" id="node-(\w+)"', page)}
    assert nodes == dict.fromkeys(["first", "left", "right", "last"], "succeeded")
    assert 'sse-connect="/live/runs/' + run_id + '"' in page
    assert "left-output" in page  # the tail of the command's stdout
    assert 'hx-post="/api/v1/runs/' + run_id + '/rerun"' in page
    assert 'id="btn-cancel"' not in page  # a finished run cannot be cancelled

    listing = (await http.get("/runs", params={"workflow": "paged", "status": "succeeded"})).text
    assert f'href="/runs/{run_id}"' in listing
    assert "workflow=paged&amp;status=succeeded" in listing  # the live table keeps the filters
    assert f'href="/runs/{run_id}"' not in (await http.get("/runs", params={"status": "failed"})).text

    workflows = (await http.get("/workflows")).text
    assert 'href="/workflows/paged"' in workflows and "a diamond for the pages" in workflows
    assert f'class="dot s-succeeded" href="/runs/{run_id}"' in workflows

    definition = (await http.get("/workflows/paged")).text
    assert "name: paged" in definition and "depends_on" in definition  # the YAML export
    assert '<input name="day" value="today">' in definition and '<input name="n" value="3">' in definition
    assert 'hx-post="/api/v1/workflows/paged/runs"' in definition
    assert definition.count('class="node s-waiting"') == 4

    overview = (await http.get("/")).text
    assert '<div class="n s-succeeded">1</div><div class="l">succeeded</div>' in overview
    assert "workers alive" in overview and '<svg class="spark"' in overview


async def test_unknown_runs_and_workflows_are_404(http: Http) -> None:
    run = await http.get("/runs/01M845PGSCND2H4M9GKB92975X")
    assert run.status_code == 404
    assert "sse-connect" in run.text  # the page still listens: a run just submitted shows up when it exists
    assert (await http.get("/workflows/nosuch")).status_code == 404


def _step(run_id: str, seq: int, task: str = "a", status: str = "running") -> bytes:
    return msgpack.packb(
        {"v": 1, "k": "run.step", "run": run_id, "seq": seq, "status": "running",
         "transitions": [{"task": task, "attempt": 1, "status": status, "ts": 1.0}]},
        use_bin_type=True,
    )  # fmt: skip


async def test_the_hub_fans_step_records_out_by_filter_and_drops_a_slow_client(client: Client) -> None:
    hub = Hub(client, queue_size=4)
    await hub.start()
    try:
        everything = hub.subscribe()
        one_run = hub.subscribe(run="RUN1")
        slow = hub.subscribe(run="RUN2")
        assert hub.clients == 3
        for seq in range(1, 3):
            await client.nc.publish("jd.evt.3.RUN1.step", _step("RUN1", seq))
        await client.nc.publish("jd.evt.5.RUN2.step", _step("RUN2", 1))
        got = [await asyncio.wait_for(everything.next(), 5) for _ in range(3)]
        assert [(e["run"], e["seq"]) for e in got] == [("RUN1", 1), ("RUN1", 2), ("RUN2", 1)]
        assert got[0]["transitions"] == [{"task": "a", "attempt": 1, "status": "running", "ts": 1.0}]
        assert got[0]["workflow"] == ""  # no snapshot of that run: unnamed rather than a failed stream
        assert [(await one_run.next(5))["seq"] for _ in range(2)] == [1, 2]
        assert hub.last_id == "RUN2:1"

        # `slow` never reads: 4 queued, the 5th record finds its queue full and ends its stream.
        for seq in range(2, 6):
            await client.nc.publish("jd.evt.5.RUN2.step", _step("RUN2", seq))
        await client.nc.flush()
        for _ in range(4):
            await asyncio.wait_for(everything.next(), 5)
        assert hub.dropped == 1 and slow.dropped
        assert await slow.next(1) is None  # the backlog is freed, only the end marker is left
        assert hub.clients == 2
        assert sum(hub.rates(seconds=60, bucket=5)) * 5 == hub.received == 7
    finally:
        await hub.stop()
    assert await everything.next(1) is None  # stopping ends every stream
