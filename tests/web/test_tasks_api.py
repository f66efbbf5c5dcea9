"""GET /api/v1/tasks (keyset-paged task history), its store query, the schema migration it needed, and
bad input answering 400 with the field's name."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from litestar.testing import AsyncTestClient

from jetdag.engine.audit import schema
from jetdag.engine.audit.store import AuditStore, Message, decode_cursor
from jetdag.engine.client import Client
from jetdag.engine.events import RunSubmitted, TaskStarted, TaskSucceeded, Transition
from jetdag.engine.messages import encode_event, encode_step
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.web.app import create_app
from tests.helpers import eventually

Http = AsyncTestClient[Any]
CHAIN = WorkflowSpec("t_tasks_chain", (TaskSpec("a", "noop"), TaskSpec("b", "noop", depends_on=("a",))))


def chain_messages(runs: int, t0: float, workflow: str = "wf") -> list[Message]:
    """Runs of a two-task chain, written as the engine and a worker write them."""
    out: list[tuple[str, bytes]] = []
    for r in range(runs):
        run, t = f"R{r:05d}", t0 + r
        subject = f"jd.evt.0.{run}"
        out.append((subject, encode_event(RunSubmitted(run, workflow, 1, {}, t))))
        out.append((f"{subject}.step", encode_step(run, 1, "running", [Transition("a", 1, "queued", t)])))
        for i, name in enumerate(("a", "b")):
            out.append((subject, encode_event(TaskStarted(run, name, 1, t + 0.1 + i, f"w{r % 2}"))))
            out.append((subject, encode_event(TaskSucceeded(run, name, 1, t + 0.5 + i, f"w{r % 2}", {}))))
            after = [Transition("b", 1, "queued", t + 0.5)] if name == "a" else []
            steps = [Transition(name, 1, "running", t + 0.1 + i), Transition(name, 1, "succeeded", t + 0.5 + i)]
            out.append((f"{subject}.step", encode_step(run, 2 + i, "running", steps + after)))
    return [Message(seq, subject, data, t0) for seq, (subject, data) in enumerate(out, 1)]


def test_keyset_pages_cover_every_row_once_newest_first(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.duckdb").open()
    store.ingest(chain_messages(23, 1_700_000_000.0))
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        page = store.tasks(cursor=decode_cursor(cursor) if cursor else None, limit=5)
        seen += [(t["run_id"], t["task"]) for t in page["tasks"]]
        if (cursor := page["next"]) is None:
            break
    assert len(seen) == 46 and len(set(seen)) == 46
    assert seen[:3] == [("R00022", "b"), ("R00022", "a"), ("R00021", "b")]  # newest first
    (row,) = store.tasks(workflow="wf", task="a", worker="w1", status="succeeded", limit=1)["tasks"]
    assert (row["run_id"], row["worker"], row["attempts"], row["duration_ms"]) == ("R00021", "w1", 1, 400)
    window = store.tasks(since=1_700_000_010.0, until=1_700_000_012.0, limit=100)["tasks"]
    assert {t["run_id"] for t in window} == {"R00009", "R00010", "R00011"}  # by finish time: [since, until)
    assert store.tasks(limit=10_000)["next"] is None and len(store.tasks(limit=10_000)["tasks"]) == 46
    with pytest.raises(ValueError, match="not a cursor"):
        decode_cursor("garbage")
    store.close()


def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    store = AuditStore(path).open()
    store.ingest(chain_messages(3, 1_700_000_000.0))
    store.close()
    con = duckdb.connect(str(path))  # make it a version 1 file: the tasks table without the new columns
    for column in ("workflow", "worker_id", "started_at", "sort_at"):
        con.execute(f"ALTER TABLE tasks DROP COLUMN {column}")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    con.close()
    store = AuditStore(path).open()
    assert not store.rebuilt  # kept, not rebuilt from JD_EVENTS
    assert store.con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(schema.VERSION),)
    (row,) = store.tasks(task="b", limit=1, cursor=None, since=1_700_000_002.0)["tasks"]
    assert (row["workflow"], row["worker"], row["started_at"] is not None) == ("wf", "w0", True)
    store.close()


@pytest.fixture
async def http(nats_url: str, audited_system: None) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def test_tasks_endpoint_filters_and_pages(nats_url: str, http: Http) -> None:
    async with await Client.connect(nats_url) as client:
        await client.apply(CHAIN)
        runs = []
        for _ in range(3):  # one after another: newest first is then the reverse of this order
            runs.append(await client.submit(CHAIN.name))
            await client.wait(runs[-1], timeout=20)

    async def recorded() -> list[dict[str, Any]]:
        response = await http.get("/api/v1/tasks", params={"workflow": CHAIN.name, "status": "succeeded"})
        assert response.status_code == 200, response.text
        tasks: list[dict[str, Any]] = response.json()["tasks"]
        assert len(tasks) == 6
        return tasks

    tasks = await eventually(recorded)
    assert {(t["run_id"], t["task"]) for t in tasks} == {(r, n) for r in runs for n in ("a", "b")}
    assert all(t["worker"] and t["started_at"] and t["attempts"] == 1 for t in tasks)
    first = (await http.get("/api/v1/tasks", params={"task": "b", "limit": 2})).json()
    assert [t["run_id"] for t in first["tasks"]] == runs[::-1][:2] and first["next"]
    rest = (await http.get("/api/v1/tasks", params={"task": "b", "limit": 2, "cursor": first["next"]})).json()
    assert [t["run_id"] for t in rest["tasks"]] == [runs[0]] and rest["next"] is None
    later = (await http.get("/api/v1/tasks", params={"since": time.time() + 60})).json()
    assert later == {"tasks": [], "next": None}


async def test_bad_input_is_a_400_naming_the_field(http: Http) -> None:
    for params, field in (({"limit": "abc"}, "limit"), ({"limit": 501}, "limit"), ({"since": "yesterday"}, "since")):
        response = await http.get("/api/v1/tasks", params=params)
        assert response.status_code == 400, response.text
        assert field in [e["key"] for e in response.json()["extra"]], response.json()
    bad_cursor = await http.get("/api/v1/tasks", params={"cursor": "nope"})
    assert bad_cursor.status_code == 400 and "not a cursor" in bad_cursor.json()["detail"]
    body = await http.post("/api/v1/workflows/x/runs", content=b"[1, 2", headers={"content-type": "application/json"})
    assert body.status_code == 400, body.text
    not_a_map = await http.post("/api/v1/workflows/x/runs", json=[1, 2])
    assert not_a_map.status_code == 400, not_a_map.text
    assert (await http.post("/api/v1/workflows/nosuch/runs", json={})).status_code == 404
    assert (await http.get("/api/v1/runs/NOSUCHRUN")).status_code == 404
