"""Runs end to end through System and a real nats-server: retries, timeouts, dead letters, trigger rules."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.definitions import load_file
from jetdag.engine.errors import RunWaitTimeout
from jetdag.engine.handlers import Fail, Retry, TaskContext, handler
from jetdag.engine.model import RetryPolicy, TaskSpec, TriggerRule, WorkflowSpec

FAST = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.2)

DIAMOND_YAML = """\
name: t_runs_diamond
tasks:
  - name: a
    handler: command
    payload: {argv: [echo, "from a"]}
  - name: b
    handler: command
    depends_on: a
    payload: {argv: [echo, "from b"]}
  - name: c
    handler: command
    depends_on: a
    payload: {argv: [echo, "from c"]}
  - name: d
    handler: command
    depends_on: [b, c]
    payload: {argv: [echo, "from d"]}
"""

_retry_calls: dict[str, list[float]] = {}
_gates: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}


@handler("t_runs_flaky")
def flaky(ctx: TaskContext) -> dict[str, int]:
    if ctx.attempt < 3:
        raise RuntimeError(f"flaky attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@handler("t_runs_broken")
def broken(ctx: TaskContext) -> None:
    raise ValueError(f"broken on attempt {ctx.attempt}")


@handler("t_runs_slow_first")
async def slow_first(ctx: TaskContext) -> str:
    if ctx.attempt == 1:
        await asyncio.sleep(30)  # wait-ok: a handler's simulated work
    return "fast enough"


@handler("t_runs_retry_later")
def retry_later(ctx: TaskContext) -> int:
    _retry_calls.setdefault(ctx.run_id, []).append(time.time())
    if ctx.attempt == 1:
        raise Retry("not yet", delay=ctx.payload["delay"])
    return ctx.attempt


@handler("t_runs_fail")
def fail_now(ctx: TaskContext) -> None:
    raise Fail("bad input, do not retry")


@handler("t_runs_gate")
async def gate(ctx: TaskContext) -> str:
    started, release = _gates[ctx.params["gate"]]
    started.set()
    await release.wait()
    return "released"


async def dead_letters(js: JetStreamContext, subject: str) -> list[dict[str, Any]]:
    """Every message on `subject` in JD_DLQ, decoded, oldest first."""
    out: list[dict[str, Any]] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(S.DLQ, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append(msgpack.unpackb(msg.data, raw=False))
        seq = (msg.seq or seq) + 1


async def run_once(client: Client, spec: WorkflowSpec, params: dict[str, Any] | None = None) -> dict[str, Any]:
    await client.apply(spec)
    return await client.wait(await client.submit(spec.name, params), timeout=15)


async def test_a_yaml_diamond_of_commands_succeeds_with_each_stdout(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "diamond.yaml"
    path.write_text(DIAMOND_YAML)
    [spec] = load_file(path)
    view = await run_once(client, spec)
    assert view["status"] == "succeeded"
    for name in "abcd":
        task = view["tasks"][name]
        assert task["status"] == "succeeded"
        assert task["attempts"] == 1
        assert task["result"]["exit_code"] == 0
        assert task["result"]["stdout"].strip() == f"from {name}"
    assert view["tasks"]["d"]["started_at"] >= max(view["tasks"][n]["finished_at"] for n in "bc")


async def test_a_task_that_fails_twice_then_succeeds_takes_three_attempts(client: Client) -> None:
    spec = WorkflowSpec("t_runs_flaky_wf", (TaskSpec("flaky", "t_runs_flaky"),), retry=FAST)
    view = await run_once(client, spec)
    assert view["status"] == "succeeded"
    task = view["tasks"]["flaky"]
    assert (task["status"], task["attempts"], task["result"]) == ("succeeded", 3, {"attempt": 3})
    assert "error" not in task


async def test_a_task_that_always_fails_is_dead_lettered_once_with_its_last_error(client: Client) -> None:
    spec = WorkflowSpec(
        "t_runs_broken_wf",
        (TaskSpec("broken", "t_runs_broken"), TaskSpec("after", "noop", depends_on=("broken",))),
        retry=FAST,
    )
    view = await run_once(client, spec)
    assert view["status"] == "failed"
    task = view["tasks"]["broken"]
    assert (task["status"], task["attempts"]) == ("failed", FAST.max_attempts)
    assert "ValueError: broken on attempt 3" in task["error"]
    assert "broken" in view["error"]
    assert view["tasks"]["after"]["status"] == "skipped"

    dead = await dead_letters(client.js, S.dlq_subject("default"))
    assert len(dead) == 1
    letter = dead[0]
    assert letter["k"] == "task.dead"
    assert (letter["run"], letter["task"], letter["attempt"]) == (view["run_id"], "broken", 3)
    assert "broken on attempt 3" in letter["error"]


async def test_a_task_that_outlives_its_timeout_is_retried(client: Client) -> None:
    spec = WorkflowSpec("t_runs_timeout_wf", (TaskSpec("slow", "t_runs_slow_first", timeout=0.3),), retry=FAST)
    await client.apply(spec)
    run_id = await client.submit(spec.name)
    partition = S.partition_of(run_id)
    sub = await client.js.subscribe(S.step_subject(partition, run_id), ordered_consumer=True)
    view = await client.wait(run_id, timeout=15)
    assert view["status"] == "succeeded"
    task = view["tasks"]["slow"]
    assert (task["attempts"], task["result"]) == (2, "fast enough")

    retrying = None
    while retrying is None:  # the step records tell how attempt 1 ended
        step = msgpack.unpackb((await sub.next_msg(timeout=5)).data, raw=False)
        retrying = next((t for t in step["transitions"] if t["status"] == "retrying"), None)
    await sub.unsubscribe()
    assert retrying["attempt"] == 1
    assert "timed out after 0.3s" in retrying["error"]


async def test_retry_with_a_delay_is_honoured(client: Client) -> None:
    delay = 0.6  # far above the policy's 0.05 s
    spec = WorkflowSpec(
        "t_runs_retry_wf", (TaskSpec("later", "t_runs_retry_later", payload={"delay": delay}),), retry=FAST
    )
    view = await run_once(client, spec)
    assert view["status"] == "succeeded"
    task = view["tasks"]["later"]
    assert (task["attempts"], task["result"]) == (2, 2)
    first, second = _retry_calls[view["run_id"]]
    assert task["queued_at"] >= first + delay
    assert second - first >= delay


async def test_fail_is_never_retried(client: Client) -> None:
    spec = WorkflowSpec("t_runs_fail_wf", (TaskSpec("doomed", "t_runs_fail"),), retry=FAST)
    view = await run_once(client, spec)
    assert view["status"] == "failed"
    task = view["tasks"]["doomed"]
    assert (task["status"], task["attempts"]) == ("failed", 1)
    assert task["error"] == "bad input, do not retry"


async def test_trigger_rules_after_a_failure(client: Client) -> None:
    spec = WorkflowSpec(
        "t_runs_rules_wf",
        (
            TaskSpec("extract", "t_runs_fail"),
            TaskSpec("sibling", "noop"),
            TaskSpec("transform", "noop", depends_on=("extract", "sibling")),
            TaskSpec("load", "noop", depends_on=("transform",)),
            TaskSpec("cleanup", "noop", depends_on=("extract", "sibling"), trigger_rule=TriggerRule.ALL_DONE),
            TaskSpec("alert", "noop", depends_on=("extract",), trigger_rule=TriggerRule.ONE_FAILED),
            TaskSpec("on_success", "noop", depends_on=("sibling",), trigger_rule=TriggerRule.ONE_FAILED),
        ),
        retry=FAST,
    )
    view = await run_once(client, spec)
    assert view["status"] == "failed"
    statuses = {name: t["status"] for name, t in view["tasks"].items()}
    assert statuses == {
        "extract": "failed",
        "sibling": "succeeded",
        "transform": "skipped",
        "load": "skipped",
        "cleanup": "succeeded",
        "alert": "succeeded",
        "on_success": "skipped",
    }
    assert view["tasks"]["transform"]["attempts"] == 0


async def test_a_run_keeps_its_version_when_the_workflow_is_reapplied_mid_run(client: Client) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    _gates["reapply"] = (started, release)
    v1 = WorkflowSpec(
        "t_runs_versioned",
        (TaskSpec("gate", "t_runs_gate"), TaskSpec("first", "noop", depends_on=("gate",))),
        params={"gate": "reapply"},
    )
    v2 = WorkflowSpec(
        "t_runs_versioned",
        (TaskSpec("gate", "t_runs_gate"), TaskSpec("second", "noop", depends_on=("gate",))),
        params={"gate": "reapply"},
    )
    _, rev1 = await client.apply(v1)
    run_id = await client.submit(v1.name)
    await asyncio.wait_for(started.wait(), 10)
    _, rev2 = await client.apply(v2)
    assert rev2 > rev1
    release.set()
    view = await client.wait(run_id, timeout=10)
    assert view["status"] == "succeeded"
    assert view["version"] == rev1
    assert set(view["tasks"]) == {"gate", "first"}

    later = await client.wait(await client.submit(v1.name), timeout=10)
    assert later["version"] == rev2
    assert set(later["tasks"]) == {"gate", "second"}


async def test_a_wait_that_runs_out_says_where_the_run_stands(client: Client) -> None:
    # A queue no worker serves: the run stays with its task queued.
    spec = WorkflowSpec("t_waits_out", (TaskSpec("a", "noop", queue="nobody_serves_this"),))
    await client.apply(spec)
    run_id = await client.submit(spec.name)
    with pytest.raises(RunWaitTimeout, match=rf"run {run_id} is still running after 0.5s \(a queued\)") as caught:
        await client.wait(run_id, timeout=0.5)
    assert isinstance(caught.value, TimeoutError)  # callers catching TimeoutError keep working


@handler("t_runs_big")
def big(ctx: TaskContext) -> str:
    return "x" * 5 * 1024 * 1024


@handler("t_runs_measure")
def measure(ctx: TaskContext) -> dict[str, int]:
    return {key: len(value) for key, value in ctx.payload.items()}


async def test_ten_large_results_travel_by_reference_and_reach_their_child_whole(client: Client) -> None:
    """Ten 5 MiB results would be 50 MiB of snapshot and a 10 MiB task message: by reference, both stay small."""
    bigs = tuple(TaskSpec(f"big{i}", "t_runs_big") for i in range(10))
    payload = {f"b{i}": f"{{result:big{i}}}" for i in range(10)}
    join = TaskSpec("join", "t_runs_measure", depends_on=tuple(t.name for t in bigs), payload=payload)
    view = await run_once(client, WorkflowSpec("t_runs_big_results", (*bigs, join)))
    assert view["status"] == "succeeded"
    assert view["tasks"]["join"]["result"] == {f"b{i}": 5 * 1024 * 1024 for i in range(10)}
    ref = view["tasks"]["big0"]["result"]
    assert set(ref) == {"$blob", "size"} and ref["size"] > 5 * 1024 * 1024
    snapshot, _ = await client.runs.load(view["run_id"])
    assert len(msgpack.packb(snapshot)) < 64 * 1024


async def test_a_step_record_too_large_for_one_message_goes_out_in_parts(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jetdag.actors.run.STEP_RECORD_MAX", 1024)  # a 40-wide fan-out then takes several
    width = 40
    spec = WorkflowSpec(
        "t_runs_wide_step",
        (TaskSpec("root", "noop"), *(TaskSpec(f"n{i}", "noop", depends_on=("root",)) for i in range(width))),
    )
    records: list[dict[str, Any]] = []

    async def on_step(msg: Any) -> None:
        records.append(msgpack.unpackb(msg.data, raw=False))

    sub = await client.nc.subscribe("jd.evt.*.*.step", cb=on_step)
    try:
        view = await run_once(client, spec)
    finally:
        await sub.unsubscribe()
    assert view["status"] == "succeeded"
    ours = [r for r in records if r["run"] == view["run_id"]]
    assert all(len(msgpack.packb(r)) <= 1024 for r in ours)
    queued = [t["task"] for r in ours for t in r["transitions"] if t["status"] == "queued"]
    assert sorted(queued) == sorted(["root", *(f"n{i}" for i in range(width))])  # every transition, once
    assert len({r["seq"] for r in ours}) < len(ours)  # some step came in parts


async def test_a_large_payload_travels_by_reference_and_reaches_the_handler_whole(client: Client) -> None:
    spec = WorkflowSpec("t_runs_big_payload", (TaskSpec("p", "t_runs_measure", payload={"text": "y" * 200_000}),))
    view = await run_once(client, spec)
    assert (view["status"], view["tasks"]["p"]["result"]) == ("succeeded", {"text": 200_000})
    info = await (await client.js.object_store("jd_blobs")).get_info(f"{view['run_id']}.p.1.payload")
    assert info.size > 200_000
