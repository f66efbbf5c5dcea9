"""Submitting by publishing: any NATS client starts runs through `jd.submit.*` and `jd.enqueue.*`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import nats
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import RawStreamMsg

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import SubmissionError
from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.ids import new_run_id
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.nats.setup import ensure
from tests.helpers import eventually, invalid_letters

ECHO = WorkflowSpec("t_inbox_echo_wf", (TaskSpec("echo", "t_inbox_params"),), params={"region": "eu"})

_calls: dict[str, list[tuple[float, Any]]] = {}


@handler("t_inbox_params")
def echo_params(ctx: TaskContext) -> dict[str, Any]:
    return ctx.params


@handler("t_inbox_payload")
def record_payload(ctx: TaskContext) -> Any:
    _calls.setdefault(ctx.run_id, []).append((time.time(), ctx.payload))
    return ctx.payload


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[NATS]:
    """A plain nats-py connection, as a user of another tool would have."""
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


async def test_json_params_published_to_submit_start_a_run_with_them(client: Client, raw: NATS) -> None:
    await client.apply(ECHO)
    run_id = new_run_id()
    body = orjson.dumps({"day": "2024-05-01", "n": 3})
    await raw.jetstream().publish(S.submit_subject(ECHO.name), body, headers={"Jd-Run-Id": run_id})
    view = await client.wait(run_id, timeout=10)
    assert view["status"] == "succeeded"
    expected = {"region": "eu", "day": "2024-05-01", "n": 3}
    assert view["params"] == expected
    assert view["tasks"]["echo"]["result"] == expected


async def test_msgpack_params_start_a_run_too(client: Client, raw: NATS) -> None:
    await client.apply(ECHO)
    await raw.jetstream().publish(S.submit_subject(ECHO.name), msgpack.packb({"region": "us"}))
    [run] = await eventually(lambda: client.runs_list(workflow=ECHO.name))
    view = await client.wait(run["run_id"], timeout=10)
    assert view["status"] == "succeeded"
    assert view["tasks"]["echo"]["result"] == {"region": "us"}


async def test_the_same_msg_id_published_twice_starts_one_run(client: Client, raw: NATS) -> None:
    await client.apply(ECHO)
    js = raw.jetstream()
    headers = {"Nats-Msg-Id": "order-42"}
    first = await js.publish(S.submit_subject(ECHO.name), b'{"order": 42}', headers=headers)
    again = await js.publish(S.submit_subject(ECHO.name), b'{"order": 42}', headers=headers)
    assert again.duplicate and again.seq == first.seq
    [run] = await eventually(lambda: client.runs_list(workflow=ECHO.name))
    assert (await client.wait(run["run_id"], timeout=10))["status"] == "succeeded"

    marker = await client.submit(ECHO.name, {"order": 43})  # published after both, so processed after them
    assert (await client.wait(marker, timeout=10))["status"] == "succeeded"
    orders = sorted(r["params"]["order"] for r in await client.runs_list(workflow=ECHO.name))
    assert orders == [42, 43]


async def test_a_submission_published_while_no_engine_runs_is_run_once_it_starts(nats_url: str, raw: NATS) -> None:
    js = raw.jetstream()
    await ensure(js)
    async with await Client.connect(nats_url) as client:
        await client.apply(ECHO)
        run_id = new_run_id()
        await js.publish(S.submit_subject(ECHO.name), b'{"early": true}', headers={"Jd-Run-Id": run_id})
        assert (await js.stream_info(S.INBOX)).state.messages == 1
        async with System(nats_url, concurrency=4, drain_timeout=5.0):
            view = await client.wait(run_id, timeout=10)
    assert view["status"] == "succeeded"
    assert view["params"] == {"region": "eu", "early": True}


async def test_an_unknown_workflow_gives_a_failed_run_naming_it(client: Client, raw: NATS) -> None:
    run_id = new_run_id()
    await raw.jetstream().publish(S.submit_subject("t_inbox_nowhere"), b"{}", headers={"Jd-Run-Id": run_id})
    view = await client.wait(run_id, timeout=10)
    assert view["status"] == "failed"
    assert view["workflow"] == "t_inbox_nowhere"
    assert "t_inbox_nowhere" in view["error"]


async def test_enqueue_by_publishing_runs_the_handler_once_with_the_payload(client: Client, raw: NATS) -> None:
    run_id = new_run_id()
    payload = {"file": "a.csv", "rows": [1, 2]}
    subject = S.enqueue_subject("default", "t_inbox_payload")
    await raw.jetstream().publish(subject, orjson.dumps(payload), headers={"Jd-Run-Id": run_id})
    view = await client.wait(run_id, timeout=10)
    assert view["status"] == "succeeded"
    task = view["tasks"]["t_inbox_payload"]
    assert (task["attempts"], task["result"]) == (1, payload)
    assert [p for _, p in _calls[run_id]] == [payload]


async def test_jd_delay_holds_an_enqueued_task_back(client: Client, raw: NATS) -> None:
    run_id = new_run_id()
    published = time.time()
    headers = {"Jd-Run-Id": run_id, "Jd-Delay": "0.6"}
    await raw.jetstream().publish(S.enqueue_subject("default", "t_inbox_payload"), b'"later"', headers=headers)
    view = await client.wait(run_id, timeout=10)
    assert view["status"] == "succeeded"
    [(called, payload)] = _calls[run_id]
    assert payload == "later"
    assert called - published >= 0.55  # server timestamps and ours come from the same clock


async def test_client_enqueue_with_delay_and_priority(client: Client) -> None:
    before = time.time()
    run_id = await client.enqueue("t_inbox_payload", {"via": "client"}, delay="400ms", priority=8)
    view = await client.wait(run_id, timeout=10)
    assert view["status"] == "succeeded"
    [(called, payload)] = _calls[run_id]
    assert payload == {"via": "client"}
    assert called - before >= 0.35


async def test_bad_priority_and_non_map_params_are_dead_lettered_and_the_next_submission_works(
    client: Client, raw: NATS
) -> None:
    await client.apply(ECHO)
    js = raw.jetstream()
    enqueue = S.enqueue_subject("default", "t_inbox_payload")
    await js.publish(enqueue, b'"x"', headers={"Jd-Priority": "urgent", "Jd-Run-Id": new_run_id()})
    await js.publish(S.submit_subject(ECHO.name), b"[1, 2, 3]", headers={"Jd-Run-Id": new_run_id()})

    async def two_letters() -> list[RawStreamMsg]:
        found = await invalid_letters(js)
        return found if len(found) >= 2 else []

    letters = await eventually(two_letters)
    reasons = {m.headers["Jd-Subject"]: m.headers["Jd-Reason"] for m in letters if m.headers}
    assert "Jd-Priority" in reasons[enqueue] and "urgent" in reasons[enqueue]
    assert "expected a map, got list" in reasons[S.submit_subject(ECHO.name)]

    async def inbox_empty() -> bool:  # the letter is written before the message is terminated
        return (await js.stream_info(S.INBOX)).state.messages == 0

    await eventually(inbox_empty)
    assert (await js.consumer_info(S.INBOX, S.INBOX_CONSUMER)).num_redelivered == 0  # rejected for good

    good = await client.submit(ECHO.name, {"n": 1})
    assert (await client.wait(good, timeout=10))["status"] == "succeeded"
    assert [r["run_id"] for r in await client.runs_list()] == [good]


async def test_the_client_writes_submissions_straight_into_the_runs_partition(client: Client, raw: NATS) -> None:
    await client.apply(ECHO)
    runs = [await client.submit(ECHO.name, {"n": 1}), await client.enqueue("t_inbox_payload", "direct")]
    again = await client.submit(ECHO.name, {"n": 2}, run_id=runs[0])  # a retried call: the same run, once
    assert again == runs[0]
    for run_id in runs:
        assert (await client.wait(run_id, timeout=10))["status"] == "succeeded"
    assert (await client.status(runs[0]))["params"] == {"region": "eu", "n": 1}
    assert (await raw.jetstream().stream_info(S.INBOX)).state.messages == 0  # no hop through JD_INBOX


@pytest.mark.parametrize(
    ("call", "named"),
    [
        ({"handler": "t_inbox_payload", "queue": "two words"}, "queue 'two words'"),
        ({"handler": "has space"}, "handler 'has space'"),
        ({"handler": "t_inbox_payload", "priority": 12}, "priority must be 0..9"),
        ({"handler": "t_inbox_payload", "run_id": "a.b"}, "run id 'a.b'"),
    ],
)
async def test_the_client_refuses_a_submission_no_run_can_have(
    client: Client, call: dict[str, Any], named: str
) -> None:
    with pytest.raises(SubmissionError, match=named):
        await client.enqueue(**call)
