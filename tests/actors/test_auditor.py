"""The auditor on a real nats-server and a real DuckDB file: runs land in SQL, summaries, rebuild, refusals."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import msgpack
import pytest

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import AuditError, NotFound
from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec

from ..helpers import eventually

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@handler("t_audit_sleep")
async def nap(ctx: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(ctx.payload)  # wait-ok: a handler's simulated work
    ctx.audit(slept=ctx.payload)
    return {"slept": ctx.payload}


@handler("t_audit_flaky")
def flaky(ctx: TaskContext) -> None:
    if ctx.attempt == 1:
        raise ValueError("first attempt always fails")


DIAMOND = WorkflowSpec(
    "t_audit_diamond",
    (
        TaskSpec("a", "t_audit_sleep", payload=0.05),
        TaskSpec("b", "t_audit_sleep", payload=0.3, depends_on=("a",)),
        TaskSpec("c", "t_audit_flaky", depends_on=("a",), retry=RetryPolicy(initial_delay=0.05, jitter=0)),
        TaskSpec("d", "t_audit_sleep", payload=0.05, depends_on=("b", "c")),
    ),
)


@pytest.fixture
async def audited(nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[System, Client]]:
    async with (
        System(nats_url, audit=tmp_path / "audit.duckdb", drain_timeout=1.0) as system,
        await Client.connect(nats_url) as client,
    ):
        yield system, client


async def audited_run(client: Client) -> str:
    await client.apply(DIAMOND)
    run_id = await client.submit(DIAMOND.name)
    assert (await client.wait(run_id, timeout=20))["status"] == "succeeded"

    async def in_sql() -> bool:
        result = await client.sql(f"SELECT status FROM runs WHERE run_id = '{run_id}'")
        return result["rows"] == [["succeeded"]]

    await eventually(in_sql, timeout=10)
    return run_id


async def test_a_finished_run_is_one_sql_query_away(audited: tuple[System, Client]) -> None:
    _, client = audited
    run_id = await audited_run(client)
    result = await client.sql(
        f"SELECT task, attempt, status, error_type FROM attempts WHERE run_id = '{run_id}' ORDER BY task, attempt"
    )
    assert result["columns"] == ["task", "attempt", "status", "error_type"]
    assert result["rows"] == [
        ["a", 1, "succeeded", None],
        ["b", 1, "succeeded", None],
        ["c", 1, "failed", "ValueError"],
        ["c", 2, "succeeded", None],
        ["d", 1, "succeeded", None],
    ]
    audit = await client.sql(
        f"SELECT payload->>'$.data.slept' FROM events WHERE run_id = '{run_id}' AND kind = 'task.audit' ORDER BY 1"
    )
    assert audit["rows"] == [["0.05"], ["0.05"], ["0.3"]], "handlers' audit() calls land in events"


async def test_the_summary_names_the_critical_path_and_the_retries(audited: tuple[System, Client]) -> None:
    _, client = audited
    run_id = await audited_run(client)
    summary = await client.summary(run_id)
    assert summary["critical_path"] == ["a", "b", "d"]
    assert summary["critical_path_s"] >= 0.4
    assert summary["total_retries"] == 1 and summary["failed_task"] is None
    assert [s["tasks"] for s in summary["stages"]] == [["a"], ["b", "c"], ["d"]]
    with pytest.raises(NotFound):
        await client.summary("NOSUCHRUN")


async def test_a_task_audit_pages_through_its_events(audited: tuple[System, Client]) -> None:
    _, client = audited
    run_id = await audited_run(client)
    first = await client.task_audit(run_id, "c", limit=2)
    assert [a["attempt"] for a in first["attempts"]] == [1, 2]
    # Quick attempts send no task.started: the start rides on the result, and the audit still has it.
    assert all(a["started_at"] is not None and a["run_ms"] is not None for a in first["attempts"])
    kinds = [e["kind"] for e in first["events"]]
    page = first
    while page["next"] is not None:
        page = await client.task_audit(run_id, "c", after=page["next"], limit=2)
        kinds += [e["kind"] for e in page["events"]]
    assert kinds == ["task.failed", "task.due", "task.succeeded"]


async def test_file_triggers_records_become_rows_of_files(audited: tuple[System, Client]) -> None:
    _, client = audited
    run_id = await audited_run(client)
    for seq, (run, reason) in enumerate(((run_id, None), ("", "the schedule is off"))):
        body = {"v": 1, "k": "file.seen", "run": run, "workflow": DIAMOND.name, "trigger": "files",
                "path": f"in/{seq}.csv", "size": 10 + seq, "mtime": T0, "ts": T0 + 60 + seq}  # fmt: skip
        if reason is not None:
            body["reason"] = reason
        await client.js.publish(S.file_record_subject(DIAMOND.name), msgpack.packb(body))

    async def recorded() -> list[list[Any]]:
        result = await client.sql("SELECT path, size, run_id, reason, epoch(seen_at) FROM files ORDER BY id")
        assert len(result["rows"]) == 2, result["rows"]
        return list(result["rows"])

    assert await eventually(recorded) == [
        ["in/0.csv", 10, run_id, None, T0 + 60],
        ["in/1.csv", 11, None, "the schedule is off", T0 + 61],
    ]
    events = await client.sql("SELECT run_id FROM events WHERE kind = 'file.seen' ORDER BY id")
    assert events["rows"] == [[run_id], [""]]
    runs = await client.sql("SELECT count(*) FROM runs WHERE run_id = ''")
    assert runs["rows"] == [[0]], "a record of a file that started no run makes no run"


async def test_writes_and_file_access_are_refused_with_a_reason(audited: tuple[System, Client]) -> None:
    _, client = audited
    for statement, reason in (
        ("DELETE FROM runs", "read-only"),
        ("COPY runs TO '/tmp/jetdag-leak.csv'", "COPY"),
        ("SELECT * FROM read_csv('/etc/passwd')", "not allowed"),
        ("SELECT 1; SELECT 2", "one statement"),
    ):
        with pytest.raises(AuditError, match=reason) as caught:
            await client.sql(statement)
        assert caught.value.refused, statement
    assert not await asyncio.to_thread(Path("/tmp/jetdag-leak.csv").exists)


async def test_a_deleted_file_is_rebuilt_from_the_stream(nats_url: str, tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    async with System(nats_url, audit=path, drain_timeout=1.0), await Client.connect(nats_url) as client:
        run_id = await audited_run(client)
        before = (await client.sql("SELECT count(*), max(id) FROM events"))["rows"]
    path.unlink()
    async with System(nats_url, audit=path, drain_timeout=1.0, queues=()), await Client.connect(nats_url) as client:

        async def rebuilt() -> bool:
            return (await client.sql("SELECT count(*), max(id) FROM events"))["rows"] == before

        await eventually(rebuilt, timeout=10)
        runs = await client.sql(f"SELECT status FROM runs WHERE run_id = '{run_id}'")
        assert runs["rows"] == [["succeeded"]]


async def test_without_an_auditor_sql_says_what_to_start(client: Client) -> None:
    with pytest.raises(Exception, match="no auditor is running"):
        await client.sql("SELECT 1")


async def test_a_stop_during_a_write_waits_for_it_and_closes_the_file(nats_url: str, tmp_path: Path) -> None:
    """A batch is written on a thread, which a cancellation cannot stop: the auditor must not close the
    connection under it (DuckDB refuses: "connection is busy"), and what it wrote is kept."""
    path = tmp_path / "audit.duckdb"
    entered, release = threading.Event(), threading.Event()
    async with System(nats_url, audit=path, drain_timeout=1.0, queues=()) as system:
        assert system.auditor is not None
        store = system.auditor.store
        ingest = store.ingest

        def held_ingest(batch: list[Any]) -> int:
            entered.set()
            release.wait(10)
            return ingest(batch)

        store.ingest = held_ingest  # type: ignore[method-assign]
        async with await Client.connect(nats_url) as client:
            await client.apply(DIAMOND)
            run_id = await client.submit(DIAMOND.name)
        assert await asyncio.to_thread(entered.wait, 10)
        threading.Timer(0.2, release.set).start()  # the write ends after the stop began
    # The System stopped (cancelling the auditor mid-write) without an error, and the file is whole.
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM events WHERE run_id = ?", [run_id]).fetchone() != (0,)
