"""Malformed messages are rejected with a reason (logged, counted, dead-lettered) and processing goes on."""

from __future__ import annotations

import logging

import msgpack
import pytest
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.ids import new_run_id
from jetdag.engine.model import TaskSpec, WorkflowSpec
from tests.helpers import eventually, invalid_letters

PAIR = WorkflowSpec("t_rejects_pair", (TaskSpec("a", "noop"), TaskSpec("b", "noop", depends_on=("a",))))
REJECTS_LOG = "jetdag.actors.rejects"


async def letters_for(js: JetStreamContext, subject: str, n: int) -> list[RawStreamMsg]:
    """Wait until `n` dead letters came from `subject`; those letters."""

    async def found() -> list[RawStreamMsg]:
        mine = [m for m in await invalid_letters(js) if m.headers and m.headers.get("Jd-Subject") == subject]
        return mine if len(mine) >= n else []

    return await eventually(found)


async def still_works(client: Client) -> None:
    await client.apply(PAIR)
    view = await client.wait(await client.submit(PAIR.name), timeout=10)
    assert view["status"] == "succeeded"


async def test_garbage_on_a_task_subject_is_dead_lettered_and_the_worker_goes_on(
    client: Client, system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=REJECTS_LOG)
    subject = S.task_subject("default", 5, "noop")
    await client.js.publish(subject, b"\xc1\xc1 not a task")
    [letter] = await letters_for(client.js, subject, 1)
    assert letter.data == b"\xc1\xc1 not a task"
    assert letter.headers is not None
    assert "not valid msgpack or JSON" in letter.headers["Jd-Reason"]
    assert any(subject in r.getMessage() and "not valid msgpack" in r.getMessage() for r in caplog.records)
    await eventually(lambda: _empty_tasks(client.js))  # terminated, never redelivered
    await still_works(client)


async def test_a_task_message_with_a_wrong_shape_is_rejected_with_what_is_wrong(client: Client) -> None:
    subject = S.task_subject("default", 5, "noop")
    run = new_run_id()
    wrong_version = msgpack.packb({"v": 7, "run": run, "task": "a"})
    bad_reply = msgpack.packb(
        {"v": 1, "run": run, "workflow": "w", "task": "a", "attempt": 1, "handler": "noop", "payload": None,
         "params": {}, "reply": "somewhere.else"}
    )  # fmt: skip
    not_a_map = msgpack.packb([1, 2, 3])
    for data in (wrong_version, bad_reply, not_a_map):
        await client.js.publish(subject, data)
    letters = await letters_for(client.js, subject, 3)
    reasons = sorted(m.headers["Jd-Reason"] for m in letters if m.headers)
    assert any("unsupported version v=7" in r for r in reasons)
    assert any("reply subject 'somewhere.else'" in r for r in reasons)
    assert any("expected a map, got list" in r for r in reasons)
    await still_works(client)


async def test_bad_events_are_dead_lettered_and_the_engine_goes_on(
    client: Client, system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=REJECTS_LOG)
    assert system.engine is not None
    counters = system.engine.ctx.counters
    run = new_run_id()
    subject = S.event_subject(S.partition_of(run), run)
    wrong_version = msgpack.packb({"v": 2, "k": "task.succeeded", "run": run, "task": "a", "attempt": 1, "ts": 1.0})
    unknown_kind = msgpack.packb({"v": 1, "k": "task.exploded", "run": run, "task": "a", "attempt": 1, "ts": 1.0})
    wrong_type = msgpack.packb({"v": 1, "k": "task.started", "run": run, "task": "a", "attempt": "one", "ts": 1.0})
    for data in (wrong_version, unknown_kind, wrong_type, b"\xc1 garbage"):
        await client.js.publish(subject, data)

    letters = await letters_for(client.js, subject, 4)
    reasons = [m.headers["Jd-Reason"] for m in letters if m.headers]
    assert any("unsupported version v=2" in r for r in reasons)
    assert any("unknown event kind 'task.exploded'" in r for r in reasons)
    assert any("'attempt' has the wrong type" in r for r in reasons)
    assert any("not valid msgpack or JSON" in r for r in reasons)
    assert counters.rejected >= 4
    logged = [r.getMessage() for r in caplog.records if r.name == REJECTS_LOG]
    assert any("task.exploded" in m and subject in m for m in logged)
    await still_works(client)


async def test_an_event_whose_run_id_does_not_match_its_subject_is_rejected(client: Client) -> None:
    run, other = new_run_id(), new_run_id()
    subject = S.event_subject(S.partition_of(run), run)
    body = {"v": 1, "k": "task.started", "run": other, "task": "a", "attempt": 1, "ts": 1.0}
    await client.js.publish(subject, msgpack.packb(body))
    [letter] = await letters_for(client.js, subject, 1)
    assert letter.headers is not None
    assert "does not match the subject" in letter.headers["Jd-Reason"]
    await still_works(client)


async def _empty_tasks(js: JetStreamContext) -> bool:
    return (await js.stream_info(S.TASKS)).state.messages == 0
