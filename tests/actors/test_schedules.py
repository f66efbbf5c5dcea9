"""The schedule switch in KV jd_schedules, through the Client, on a real nats-server."""

from __future__ import annotations

import msgpack
import pytest

from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import ControlError, NotFound
from jetdag.engine.model import TaskSpec, Trigger, WorkflowSpec

HOURLY = WorkflowSpec("t_sched_hourly", (TaskSpec("a", "noop"),), triggers=(Trigger(cron="0 * * * *"),))
BY_HAND = WorkflowSpec("t_sched_by_hand", (TaskSpec("a", "noop"),))


async def test_the_switch_flips_and_is_kept(client: Client) -> None:
    await client.apply(HOURLY)
    assert (await client.schedule(HOURLY.name))["enabled"] is True  # on until someone switches it off
    off = await client.toggle_schedule(HOURLY.name, by="ops")
    assert off["enabled"] is False and off["next_fire"] is None and off["changed_by"] == "ops"
    assert (await client.schedule(HOURLY.name))["enabled"] is False
    assert (await client.toggle_schedule(HOURLY.name, enabled=False))["enabled"] is False  # explicit: no flip
    on = await client.toggle_schedule(HOURLY.name)
    assert on["enabled"] is True and on["next_fire"] is not None


async def test_the_switch_keeps_what_the_scheduler_wrote(client: Client) -> None:
    await client.apply(HOURLY)
    kv = await client.js.key_value(S.SCHEDULES_KV)
    progress = {"tick": 1234.5, "fired": 1234.5, "runs": ["R1"]}
    await kv.put(HOURLY.name, msgpack.packb({"v": 1, "enabled": True, "triggers": {"cron": progress}}))
    state = await client.toggle_schedule(HOURLY.name)
    assert state["enabled"] is False and state["last_fire"] == 1234.5
    assert (await client.schedules.get(HOURLY.name)).trigger("cron").runs == ("R1",)


async def test_a_workflow_without_triggers_or_name_is_refused(client: Client) -> None:
    await client.apply(BY_HAND)
    with pytest.raises(ControlError, match="has no schedule: no cron, file or message trigger"):
        await client.toggle_schedule(BY_HAND.name)
    with pytest.raises(NotFound):
        await client.toggle_schedule("t_sched_nobody")
