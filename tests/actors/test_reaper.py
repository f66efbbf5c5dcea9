"""Worker recovery in one process: the reaper fails the attempts of a silent worker, spares one that beats
or stops cleanly, and a worker acks a redelivered task message unrun once its attempt is stale."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import msgpack
import pytest
from nats.js.api import RawStreamMsg
from nats.js.errors import KeyNotFoundError, NotFoundError

from jetdag.actors.reaper import Reaper
from jetdag.actors.system import System
from jetdag.actors.worker import task_consumer_config
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import NotFound
from jetdag.engine.events import RunSubmitted, TaskDue, TaskFailed
from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.ids import new_run_id
from jetdag.engine.messages import MSG_ID, TaskMessage, encode_task, pack
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from jetdag.engine.nats.setup import close, connect, ensure
from jetdag.engine.run import decide
from jetdag.engine.state import RunStatus, new_run
from jetdag.engine.stores.runs import RunStore
from tests.helpers import eventually, run_inputs

_calls: Counter[tuple[str, int]] = Counter()


@handler("t_fence_count")
def fence_count(ctx: TaskContext) -> int:
    _calls[(ctx.run_id, ctx.attempt)] += 1
    return ctx.attempt


async def _entry(client: Client, worker_id: str) -> dict[str, Any] | None:
    try:
        entry = await (await client.js.key_value(S.WORKERS_KV)).get(worker_id)
    except KeyNotFoundError:
        return None
    return msgpack.unpackb(entry.value, raw=False) if entry.value else None


async def test_a_silent_worker_is_presumed_dead_and_its_attempt_fails_for_a_retry(nats_url: str) -> None:
    spec = WorkflowSpec(
        "t_reap_wf",
        (TaskSpec("a", "noop", queue="t_reap_nobody"),),  # no worker serves it: the ghost below "runs" it
        retry=RetryPolicy(max_attempts=3, initial_delay=0.05),
    )
    async with System(nats_url, queues=[]) as system, await Client.connect(nats_url) as client:
        assert system.engine is not None
        await client.apply(spec)
        run_id = await client.submit(spec.name)
        await eventually(lambda: _task(client, run_id, status="queued", attempts=1))
        reply = S.event_subject(S.partition_of(run_id), run_id)
        ghost = {
            "v": 1, "id": "t-ghost", "host": "ghost-host", "pid": 1, "queues": ["t_reap_nobody"], "interval": 0.1,
            "beat": time.time(), "started": time.time(), "done": 0,
            "running": [{"run": run_id, "task": "a", "attempt": 1, "reply": reply, "started": time.time()}],
        }  # fmt: skip
        await (await client.js.key_value(S.WORKERS_KV)).put("t-ghost", pack(ghost))

        task = await eventually(lambda: _task(client, run_id, status="queued", attempts=2))
        assert task["error"].startswith("worker t-ghost on ghost-host presumed dead (no heartbeat for ")
        await eventually(lambda: _is_none(_entry(client, "t-ghost")))  # reaped once: the entry is gone
        assert system.engine.reaper.reaped == 1

        (reaped,) = [
            m for m in await run_inputs(client.js, run_id) if m.headers and m.headers[MSG_ID].endswith(":reaped")
        ]
        assert reaped.headers is not None and reaped.headers[MSG_ID] == f"{run_id}:a:1:reaped"
        body = msgpack.unpackb(reaped.data, raw=False)
        assert (body["k"], body["attempt"], body["retryable"], body["worker"]) == ("task.failed", 1, True, "t-ghost")
        assert body["details"]["reaped_by"] == system.engine_id


async def test_a_worker_that_beats_is_never_reaped_and_one_that_stops_is_forgotten(nats_url: str) -> None:
    async with System(nats_url, queues=[]) as engine_side, await Client.connect(nats_url) as client:
        assert engine_side.engine is not None
        reaper = engine_side.engine.reaper
        worker_side = System(nats_url, engine=False, heartbeat=0.2)
        await worker_side.start()
        try:
            assert worker_side.worker is not None
            worker_id = worker_side.worker.id
            first = await eventually(lambda: reaper.seen.get(worker_id))
            # Fifteen beats (five thresholds) come and go while the reaper keeps watching.
            await eventually(lambda: reaper.seen[worker_id].revision >= first.revision + 15, timeout=20)
            assert reaper.reaped == 0
        finally:
            await worker_side.stop()
        await eventually(lambda: worker_id not in reaper.seen)  # its delete told the reaper it stopped
        assert await _entry(client, worker_id) is None
        assert reaper.reaped == 0


@pytest.mark.parametrize("run_done", [False, True], ids=["newer attempt", "run over"])
async def test_a_redelivered_task_of_a_stale_attempt_is_acked_without_running(nats_url: str, run_done: bool) -> None:
    queue, run_id = "t_fence_q", new_run_id()
    spec = WorkflowSpec("t_fence_wf", (TaskSpec("a", "t_fence_count", queue=queue),), retry=RetryPolicy(max_attempts=3))
    # The run's snapshot: attempt 1 failed (its worker was presumed dead), attempt 2 is queued.
    state = new_run(run_id, spec.name, 1, spec, {}, 1.0)
    decide(state, RunSubmitted(run_id, spec.name, 1, {}, 1.0), now=1.0)
    decide(state, TaskFailed(run_id, "a", 1, 2.0, "worker w presumed dead (no heartbeat for 15.0s)", "w"), now=2.0)
    decide(state, TaskDue(run_id, "a", 2, 2.0, 2.0), now=100.0)
    assert (state.tasks["a"].status.value, state.tasks["a"].attempt) == ("queued", 2)
    if run_done:
        state.status = RunStatus.SUCCEEDED
    nc = await connect(nats_url, "t_fence")
    try:
        js = nc.jetstream()
        await ensure(js)
        await (await RunStore.open(nc, js)).save(run_id, state.to_dict(), 0)
        reply = S.event_subject(S.partition_of(run_id), run_id)
        for attempt in (1, 2):
            task = TaskMessage(run_id, spec.name, "a", attempt, "t_fence_count", None, {}, reply, queue=queue)
            subject = S.task_subject(queue, 5, "t_fence_count")
            await js.publish(subject, encode_task(task), headers={MSG_ID: f"{run_id}:a:{attempt}:task"})
        # Both are delivered once and handed back, as if their worker had died: the next delivery is the second.
        await js.add_consumer(S.TASKS, config=task_consumer_config(queue, 5, "t_fence_count"))
        sub = await js.pull_subscribe_bind(durable=S.task_consumer(queue, 5, "t_fence_count"), stream=S.TASKS)
        for msg in await sub.fetch(2, timeout=5):
            assert msg.metadata.num_delivered == 1
            await msg.nak()
        await sub.unsubscribe()

        async with System(nats_url, engine=False, queues=[queue]) as worker_side:
            assert worker_side.worker is not None
            await eventually(lambda: _equals(_messages(js), 0))  # both acked
            expected_skips = 2 if run_done else 1
            await eventually(lambda: worker_side.worker is not None and worker_side.worker.skipped == expected_skips)
            assert worker_side.worker.done_count == 2
    finally:
        await close(nc)
    assert _calls[(run_id, 1)] == 0  # the stale attempt never ran again
    assert _calls[(run_id, 2)] == (0 if run_done else 1)  # the current one did: a plain redelivery


async def _task(client: Client, run_id: str, *, status: str, attempts: int) -> dict[str, Any] | None:
    try:
        task: dict[str, Any] = (await client.status(run_id))["tasks"]["a"]
    except NotFound:
        return None  # not created by the engine yet
    return task if (task["status"], task["attempts"]) == (status, attempts) else None


async def _is_none(value: Any) -> bool:
    return await value is None


async def _messages(js: Any) -> int:
    return int((await js.stream_info(S.TASKS)).state.messages)


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


# --- the reaper's judgement, with a clock and a store of our own (no server) ---------------------------------


class _Conn:
    is_connected = True


class _Store:
    """Stands in for the JetStream calls the reaper makes: the last message of a key, deletes, and its publisher's
    publishes."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}  # key -> RawStreamMsg-like, or absent (expired)
        self.published: list[tuple[str, dict[str, Any], str]] = []
        self.deleted: list[tuple[str, int | None]] = []

    async def get_msg(self, stream: str, subject: str) -> Any:
        key = subject.rsplit(".", 1)[-1]
        if key not in self.last:
            raise NotFoundError
        return self.last[key]

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> Any:
        self.published.append((subject, msgpack.unpackb(data, raw=False), headers[MSG_ID]))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def delete(self, key: str, last: int | None = None) -> bool:
        self.deleted.append((key, last))
        return True


def _beat(run_id: str = "01RUN", interval: float = 1.0) -> dict[str, Any]:
    reply = S.event_subject(S.partition_of(run_id), run_id)
    return {"id": "w1", "host": "h1", "interval": interval, "beat": 0.0,
            "running": [{"run": run_id, "task": "a", "attempt": 1, "reply": reply, "started": 0.0}]}  # fmt: skip


def _judge() -> tuple[Any, _Store, _Conn, list[float]]:
    now, store, conn = [0.0], _Store(), _Conn()
    reaper = Reaper(conn, store, "e1", clock=lambda: now[0])  # type: ignore[arg-type]
    reaper.publisher = store  # type: ignore[assignment]
    return reaper, store, conn, now


def _stored(revision: int, value: dict[str, Any] | None = None, op: str | None = None) -> Any:
    return RawStreamMsg(seq=revision, data=pack(value) if value else b"", headers={"KV-Operation": op} if op else None)


async def test_silence_past_three_beats_reaps_once_and_only_that_revision_is_deleted() -> None:
    reaper, store, _, now = _judge()
    reaper._note("w1", pack(_beat()), 7, None)
    store.last["w1"] = _stored(7, _beat())
    now[0] = 2.9
    await reaper.scan(store)  # type: ignore[arg-type]
    assert store.published == []
    now[0] = 3.2
    await reaper.scan(store)  # type: ignore[arg-type]
    ((subject, body, dedupe),) = store.published
    assert (subject, dedupe) == (S.event_subject(S.partition_of("01RUN"), "01RUN"), "01RUN:a:1:reaped")
    assert body["error"] == "worker w1 on h1 presumed dead (no heartbeat for 3.2s)"
    assert store.deleted == [("w1", 7)] and "w1" not in reaper.seen
    await reaper.scan(store)  # type: ignore[arg-type]
    assert len(store.published) == 1


async def test_an_expired_entry_is_still_reaped() -> None:
    reaper, store, _, now = _judge()
    reaper._note("w1", pack(_beat()), 7, None)  # the bucket's TTL then removes it without a trace
    now[0] = 4.0
    await reaper.scan(store)  # type: ignore[arg-type]
    assert [p[2] for p in store.published] == ["01RUN:a:1:reaped"] and store.deleted == [("w1", None)]


async def test_a_newer_beat_in_the_store_or_a_delete_spares_the_worker() -> None:
    reaper, store, _, now = _judge()
    reaper._note("w1", pack(_beat()), 7, None)
    store.last["w1"] = _stored(9, _beat())  # the watch had not delivered it yet
    now[0] = 4.0
    await reaper.scan(store)  # type: ignore[arg-type]
    assert store.published == [] and reaper.seen["w1"].revision == 9 and reaper.seen["w1"].at == 4.0
    store.last["w1"] = _stored(10, op="DEL")  # stopped cleanly (or another engine reaped it)
    now[0] = 8.0
    await reaper.scan(store)  # type: ignore[arg-type]
    assert store.published == [] and "w1" not in reaper.seen


async def test_after_an_outage_every_worker_gets_a_full_threshold_again() -> None:
    reaper, store, conn, now = _judge()
    reaper._note("w1", pack(_beat()), 7, None)
    store.last["w1"] = _stored(7, _beat())
    conn.is_connected, now[0] = False, 2.0
    await reaper.scan(store)  # type: ignore[arg-type]
    conn.is_connected, now[0] = True, 30.0  # back, and the worker has not beaten yet
    await reaper.scan(store)  # type: ignore[arg-type]
    now[0] = 32.9
    await reaper.scan(store)  # type: ignore[arg-type]
    assert store.published == []
    now[0] = 33.1
    await reaper.scan(store)  # type: ignore[arg-type]
    assert len(store.published) == 1
