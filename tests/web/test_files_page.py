"""The files page (`/files`) against a real nats-server and auditor: file triggers' records, as the file
watcher publishes them to JD_EVENTS, show up newest first with the run each started or why none."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from litestar.testing import AsyncTestClient

from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.web.app import create_app
from tests.helpers import eventually

Http = AsyncTestClient[Any]
LOADS = WorkflowSpec("t_files_load", (TaskSpec("load", "command", payload={"argv": ["true"]}),))


@pytest.fixture
async def http(nats_url: str, audited_system: None) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def record(client: Client, workflow: str, path: str, *, run: str = "", reason: str | None = None) -> None:
    """What the file watcher publishes for each file it sees."""
    body: dict[str, Any] = {"v": 1, "k": "file.seen", "run": run, "workflow": workflow, "trigger": "files",
                            "path": path, "size": 1536, "mtime": time.time() - 60, "ts": time.time()}  # fmt: skip
    if reason is not None:
        body["reason"] = reason
    await client.js.publish(S.file_record_subject(workflow), msgpack.packb(body))


async def test_files_page_shows_each_file_with_its_run_or_why_none(nats_url: str, http: Http) -> None:
    async with await Client.connect(nats_url) as client:
        await client.apply(LOADS)
        run_id = await client.submit(LOADS.name)
        await record(client, LOADS.name, "in/2026-01-01.csv", run=run_id)
        await record(client, LOADS.name, "in/early.csv", reason="present before the trigger was installed")
        await record(client, "t_files_other", "other/x.csv", reason="the schedule is off")
        await client.wait(run_id, timeout=20)

    async def listed() -> str:
        page = await http.get("/files")
        assert page.status_code == 200 and "other/x.csv" in page.text, page.text
        return page.text

    page = await eventually(listed)
    assert f'<a href="/runs/{run_id}">{run_id}</a>' in page
    assert '<span class="muted">present before the trigger was installed</span>' in page
    assert "1.5 kB" in page and "in/2026-01-01.csv" in page
    # Newest first: the records were published in this order.
    assert page.index("other/x.csv") < page.index("in/early.csv") < page.index("in/2026-01-01.csv")
    assert f'href="/files?workflow={LOADS.name}"' in page

    mine = (await http.get("/files", params={"workflow": LOADS.name})).text
    assert "in/early.csv" in mine and "other/x.csv" not in mine and f'value="{LOADS.name}"' in mine
    none = (await http.get("/files", params={"workflow": "it's not there"})).text
    assert "No files seen for workflow it&#39;s not there." in none
    # The run the file started is an ordinary run: its own pages are not confused by the file's record.
    assert (await http.get(f"/runs/{run_id}")).status_code == 200
