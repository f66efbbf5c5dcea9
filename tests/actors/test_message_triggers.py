"""`on_message` triggers on a real nats-server: a message on the subject starts a run with its body as params."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
import pytest

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import ConfigError, NotFound
from jetdag.engine.model import TaskSpec, Trigger, WorkflowSpec
from tests.helpers import eventually, invalid_letters

ORDERS = WorkflowSpec(
    "t_on_orders",
    (TaskSpec("take", "noop", payload={"order": "{param:id}"}),),
    params={"id": 0},
    triggers=(Trigger(subject="orders.created"),),
)


async def runs_of(client: Client, workflow: str, n: int) -> list[dict[str, Any]]:
    runs = await client.runs_list(workflow=workflow)
    assert len(runs) == n
    return runs


async def test_a_message_starts_a_run_with_its_params_and_headers(client: Client) -> None:
    await client.apply(ORDERS)
    await client.nc.publish("orders.created", orjson.dumps({"id": 7}), headers={"X-Source": "shop"})
    await client.nc.publish("orders.created", msgpack.packb({"id": 8}))
    runs = await eventually(lambda: runs_of(client, ORDERS.name, 2), timeout=10)
    views = [await client.wait(r["run_id"], timeout=10) for r in runs]
    assert sorted(v["params"]["id"] for v in views) == [7, 8]
    shop = next(v for v in views if v["params"]["id"] == 7)
    assert shop["meta"] == {"X-Source": "shop", "subject": "orders.created"} and shop["trigger"] == "message"
    assert shop["status"] == "succeeded"


async def test_a_malformed_message_is_dead_lettered_with_its_reason(client: Client) -> None:
    await client.apply(ORDERS)
    await client.nc.publish("orders.created", b"[1, 2]")
    letters = await eventually(lambda: invalid_letters(client.js), timeout=10)
    assert letters[0].headers is not None and "expected a map" in letters[0].headers["Jd-Reason"]
    assert letters[0].headers["Jd-Subject"] == "orders.created"
    await client.nc.publish("orders.created", orjson.dumps({"id": 9}))  # and it goes on
    await eventually(lambda: runs_of(client, ORDERS.name, 1), timeout=10)


async def test_messages_published_while_no_engine_runs_wait_for_one(nats_url: str) -> None:
    async with System(nats_url, engine=False, queues=[]), await Client.connect(nats_url) as client:
        await client.apply(ORDERS)  # listening starts with apply, engine or not
        for i in range(3):
            await client.nc.publish("orders.created", orjson.dumps({"id": i}))
        await eventually(lambda: _stored(client, 3), timeout=10)  # stored while no engine runs
        async with System(nats_url, concurrency=4):
            runs = await eventually(lambda: runs_of(client, ORDERS.name, 3), timeout=15)
    assert sorted(r["params"]["id"] for r in runs) == [0, 1, 2]


async def test_a_subject_your_own_stream_holds_is_read_from_it(client: Client) -> None:
    await client.js.add_stream(name="SHOP", subjects=["shop.>"])
    shop = WorkflowSpec("t_on_shop", (TaskSpec("take", "noop"),), triggers=(Trigger(subject="shop.created"),))
    await client.apply(shop)
    assert (await client.js.consumer_info("SHOP", S.message_consumer(shop.name))).config.filter_subject == (
        "shop.created"
    )
    await client.js.publish("shop.created", orjson.dumps({"id": 1}))
    await eventually(lambda: runs_of(client, shop.name, 1), timeout=10)
    with pytest.raises(Exception, match="not found"):
        await client.js.stream_info(S.TRIGGERS)  # nothing was taken from your stream


async def test_a_subject_that_straddles_a_stream_is_refused_at_apply(client: Client) -> None:
    await client.js.add_stream(name="SHOP", subjects=["shop.created"])
    wide = WorkflowSpec("t_on_wide", (TaskSpec("take", "noop"),), triggers=(Trigger(subject="shop.*"),))
    with pytest.raises(ConfigError, match=r"on_message 'shop\.\*': cannot be stored"):
        await client.apply(wide)
    with pytest.raises(NotFound):
        await client.defs.get(wide.name)  # nothing applied


async def _stored(client: Client, n: int) -> bool:
    return (await client.js.stream_info(S.TRIGGERS)).state.messages == n
