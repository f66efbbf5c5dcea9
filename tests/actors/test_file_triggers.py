"""File triggers on a real nats-server and a real directory: a new file starts one run, once it holds still."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, Trigger, WorkflowSpec
from jetdag.engine.stores.files import SeenFile, decode
from tests.helpers import eventually

SETTLE = 0.4


def watching(name: str, pattern: str) -> WorkflowSpec:
    task = TaskSpec(
        "take", "noop", payload={"file": "{meta:file}", "name": "{meta:filename}", "day": "{yyyy}-{mm}-{dd}"}
    )
    return WorkflowSpec(name, (task,), triggers=(Trigger(files=(pattern,)),))


@pytest.fixture
async def files_client(nats_url: str) -> AsyncIterator[Client]:
    """An engine that takes files after SETTLE seconds of stillness, a worker, and a client."""
    async with System(nats_url, concurrency=8, file_settle=SETTLE), await Client.connect(nats_url) as client:
        yield client


async def runs_of(client: Client, workflow: str, n: int) -> list[dict[str, Any]]:
    runs = await client.runs_list(workflow=workflow)
    assert len(runs) == n, runs
    return runs


async def test_a_dropped_file_starts_one_run_with_its_path_and_date(files_client: Client, tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    (inbox / "old").mkdir(parents=True)
    (inbox / "old" / "there-before.csv").write_text("x\n")  # before the trigger: not new
    spec = watching("t_files_drop", f"{inbox}/*/*.csv")
    await files_client.apply(spec)
    await eventually(lambda: _watching(files_client, spec.name), timeout=10)
    day = inbox / "2026"
    day.mkdir()
    landed = day / "sales-2026-11-22T13.csv"
    landed.write_text("a,b\n1,2\n")
    [run] = await eventually(lambda: runs_of(files_client, spec.name, 1), timeout=10)
    view = await files_client.wait(run["run_id"], timeout=10)
    assert view["status"] == "succeeded" and view["trigger"] == "files"
    assert view["meta"] == {"file": str(landed), "filename": landed.name}
    assert view["logical_time"] == dt.datetime(2026, 11, 22, 13, tzinfo=dt.UTC).timestamp()
    assert view["tasks"]["take"]["status"] == "succeeded"
    # Seen once: a rescan or a restart finds its record and starts nothing.
    records = await eventually(lambda: _records(files_client, 2), timeout=5)
    assert {r.path: (r.run, r.reason) for r in records if r} == {
        str(landed): (run["run_id"], ""),
        str(inbox / "old" / "there-before.csv"): (
            "",
            "there before the trigger was applied: only new files start runs",
        ),
    }
    os.utime(landed)  # touched: a new mtime is a new version of the file
    await eventually(lambda: runs_of(files_client, spec.name, 2), timeout=10)


async def test_a_half_written_file_waits_until_it_holds_still(files_client: Client, tmp_path: Path) -> None:
    spec = watching("t_files_growing", f"{tmp_path}/*.log")
    await files_client.apply(spec)
    await eventually(lambda: _watching(files_client, spec.name), timeout=10)
    growing = tmp_path / "big.log"
    deadline = time.monotonic() + 4 * SETTLE
    with growing.open("w") as out:
        while time.monotonic() < deadline:  # a slow writer: a line every SETTLE / 4 seconds
            out.write("line\n")
            out.flush()
            assert await files_client.runs_list(workflow=spec.name) == []
            await asyncio.sleep(SETTLE / 4)
    [run] = await eventually(lambda: runs_of(files_client, spec.name, 1), timeout=10)
    assert (await files_client.wait(run["run_id"], timeout=10))["status"] == "succeeded"


async def _watching(client: Client, workflow: str) -> bool:
    state = await client.schedules.get(workflow)
    return state.trigger("files").since is not None


async def _records(client: Client, n: int) -> list[SeenFile | None]:
    kv = await client.js.key_value(S.FILES_KV)
    records = [decode((await kv.get(key)).value) for key in await kv.keys()]
    assert len(records) == n
    return records
