"""`max_active_runs` on a real nats-server: runs past the limit wait pending, first come first served."""

from __future__ import annotations

from typing import Any

from jetdag.engine.client import Client
from jetdag.engine.errors import NotFound
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.stores.gate import GateStore
from tests.helpers import eventually

TWO_AT_ONCE = WorkflowSpec("t_gate_two", (TaskSpec("work", "sleep", payload={"seconds": 0.8}),), max_active_runs=2)


async def test_the_third_run_waits_until_one_of_two_ends(client: Client) -> None:
    await client.apply(TWO_AT_ONCE)
    runs = [await client.submit(TWO_AT_ONCE.name) for _ in range(4)]

    async def two_running_two_held() -> dict[str, Any]:
        views = {r: await _view(client, r) for r in runs}
        assert [views[r]["status"] for r in runs[:2]] == ["running", "running"]
        assert [views[r]["status"] for r in runs[2:]] == ["pending", "pending"]
        assert all(views[r].get("held") for r in runs[2:])
        return views

    await eventually(two_running_two_held, timeout=10)
    finals = [await client.wait(r, timeout=20) for r in runs]
    assert [f["status"] for f in finals] == ["succeeded"] * 4
    first_end = min(f["finished_at"] for f in finals[:2])
    assert finals[2]["started_at"] >= first_end - 0.05  # admitted once a slot was free
    assert finals[2]["started_at"] <= finals[3]["started_at"]  # first come, first served
    gate = await GateStore(await client.js.key_value("jd_schedules")).read(TWO_AT_ONCE.name)
    assert gate.active == [] and gate.waiting == []


async def test_a_cancelled_held_run_gives_its_place_up(client: Client) -> None:
    one = WorkflowSpec("t_gate_one", (TaskSpec("work", "sleep", payload={"seconds": 0.5}),), max_active_runs=1)
    await client.apply(one)
    first, second, third = [await client.submit(one.name) for _ in range(3)]
    await eventually(lambda: _status_is(client, second, "pending"), timeout=10)
    await client.cancel(second, "not needed")
    assert (await client.wait(second, timeout=10))["status"] == "cancelled"
    assert (await client.wait(third, timeout=20))["status"] == "succeeded"
    assert (await client.wait(first, timeout=20))["status"] == "succeeded"


async def _view(client: Client, run_id: str) -> dict[str, Any]:
    try:
        return await client.status(run_id)
    except NotFound:
        return {"status": "not there yet"}


async def _status_is(client: Client, run_id: str, status: str) -> bool:
    return (await _view(client, run_id))["status"] == status
