"""`max_active_runs` on a real nats-server: runs past the limit wait pending, first come first served."""

from __future__ import annotations

from typing import Any

from jetdag.engine.client import Client
from jetdag.engine.errors import NotFound
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.stores.gate import GateStore
from tests.helpers import eventually

TWO_AT_ONCE = WorkflowSpec("t_gate_two", (TaskSpec("work", "sleep", payload={"seconds": 1.0}),), max_active_runs=2)


async def test_the_third_run_waits_until_one_of_two_ends(client: Client) -> None:
    await client.apply(TWO_AT_ONCE)
    runs = [await client.submit(TWO_AT_ONCE.name) for _ in range(4)]
    held = await eventually(lambda: _view(client, runs[3]), timeout=10)
    assert held["status"] == "pending" and held["held"] is True  # the fourth waits its turn
    finals = [await client.wait(r, timeout=20) for r in runs]
    assert [f["status"] for f in finals] == ["succeeded"] * 4
    # Never more than two at once, and the waiting ones went first come, first served.
    spans = sorted((f["started_at"], f["finished_at"]) for f in finals)
    assert all(sum(1 for s, e in spans if s <= t < e) <= 2 for t, _ in spans)
    # The first slot to free goes to the third, the second to the fourth. (Which of them starts its task first
    # is the workers' race when both slots free at once, so their start times are not compared.)
    ends = sorted(f["finished_at"] for f in finals[:2])
    assert finals[2]["started_at"] >= ends[0] - 0.05 and finals[3]["started_at"] >= ends[1] - 0.05
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
        return {}


async def _status_is(client: Client, run_id: str, status: str) -> bool:
    return (await _view(client, run_id)).get("status") == status
