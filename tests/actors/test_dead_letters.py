"""Dead letters: a task out of attempts lands in JD_DLQ, is listed newest first, and requeue runs it again."""

from __future__ import annotations

from typing import Any

import pytest

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client, RequeueRefused
from jetdag.engine.errors import NotFound
from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec

from ..helpers import eventually

HEALED: set[str] = set()
"""Payload keys whose handler now succeeds: the fix an operator makes before requeueing."""


@handler("t_dlq_fragile")
def fragile(ctx: TaskContext) -> dict[str, Any]:
    key = ctx.payload["key"]
    if key not in HEALED:
        raise ValueError(f"{key} is broken")
    return {"fixed": key, "day": ctx.payload["day"]}


def workflow(key: str) -> WorkflowSpec:
    return WorkflowSpec(
        f"t_dlq_{key}",
        (
            TaskSpec("load", "t_dlq_fragile", payload={"key": key, "day": "{params.day}"},
                     retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0)),
        ),
    )  # fmt: skip


async def dead_run(client: Client, key: str) -> str:
    spec = workflow(key)
    await client.apply(spec)
    run_id = await client.submit(spec.name, {"day": "2026-01-02"})
    view = await client.wait(run_id, timeout=20)
    assert view["status"] == "failed" and view["tasks"]["load"]["attempts"] == 2
    return run_id


async def letter_of(client: Client, run_id: str) -> dict[str, Any]:
    async def listed() -> dict[str, Any] | None:
        letters = (await client.dead_letters())["letters"]
        return next((letter for letter in letters if letter.get("run") == run_id), None)

    found: dict[str, Any] = await eventually(listed)
    return found


async def test_a_dead_task_is_listed_requeued_and_runs_again(client: Client, system: System) -> None:
    run_id = await dead_run(client, "a")
    letter = await letter_of(client, run_id)
    assert (letter["kind"], letter["queue"], letter["task"], letter["attempt"], letter["requeueable"]) == (
        "task.dead", "default", "load", 2, True,
    )  # fmt: skip
    assert letter["reason"] == "ValueError: a is broken" and letter["workflow"] == "t_dlq_a"

    HEALED.add("a")
    done = await client.requeue(letter["seq"])
    assert (done["queue"], done["handler"]) == ("default", "t_dlq_fragile")
    # The task runs again as a run of its own, with the payload the dead attempt got (templates rendered).
    view = await client.wait(done["run_id"], timeout=20)
    assert view["status"] == "succeeded"
    assert (await client.status(done["run_id"]))["tasks"]
    assert (await client.status(run_id))["status"] == "failed"  # the dead run stays as it ended
    # The letter is gone; requeueing it again is a 404, not a second run.
    assert all(m.get("seq") != letter["seq"] for m in (await client.dead_letters())["letters"])
    with pytest.raises(NotFound):
        await client.requeue(letter["seq"])


async def test_letters_are_newest_first_paged_and_filtered_by_queue(client: Client, system: System) -> None:
    runs = [await dead_run(client, key) for key in ("b", "c", "d")]
    for run_id in runs:
        await letter_of(client, run_id)
    await client.js.publish(S.task_subject("default", 5, "noop"), b"\xc1 not a task")  # the worker dead-letters it
    first = await client.dead_letters(queue="default", limit=2)
    assert [letter["run"] for letter in first["letters"]] == runs[::-1][:2] and first["next"] is not None
    rest = await client.dead_letters(queue="default", limit=2, before=first["next"])
    assert [letter["run"] for letter in rest["letters"]] == [runs[0]] and rest["next"] is None

    async def invalid() -> list[dict[str, Any]]:
        return (await client.dead_letters(queue=S.INVALID_DLQ))["letters"]

    (bad,) = await eventually(invalid)
    assert bad["kind"] == "invalid" and not bad["requeueable"] and bad["reason"]
    with pytest.raises(RequeueRefused, match="malformed message"):
        await client.requeue(bad["seq"])
    assert (await client.dead_letters())["letters"][0]["seq"] == bad["seq"]  # refused: still there, newest
    with pytest.raises(NotFound):
        await client.requeue(10_000)
