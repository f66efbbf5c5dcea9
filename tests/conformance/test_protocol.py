"""Worker wire protocol v1 (README, "Wire format"), checked against every worker implementation.

The suite plays the engine: it publishes task messages into JD_TASKS and reads what the worker sends back.
Each test has a NATS server of its own and starts the worker itself (`conf.start()`).
"""

from __future__ import annotations

import os
import signal
import zlib
from typing import Any

import msgpack
import pytest
from nats.js.errors import KeyNotFoundError

from jetdag.actors.worker import task_consumer_config
from jetdag.engine import subjects as S
from jetdag.engine.messages import MSG_ID, TaskMessage, encode_task, pack
from jetdag.engine.stores.packing import deflate
from tests.conformance.harness import CANCELLED, HANDLERS, HEARTBEAT, QUEUE, Conformance, WorkerProcess, until
from tests.helpers import invalid_letters

PAYLOAD: dict[str, Any] = {
    "text": "héllo",
    "n": 42,
    "big": 2**40,
    "negative": -7,
    "x": 1.5,
    "flag": True,
    "none": None,
    "list": [1, "two", [3.25], {"four": 4}],
    "nested": {"a": {"b": {"c": []}}},
    "blob": b"\x00\x01\xff",
}


def _check_result_shape(body: dict[str, Any], msg: TaskMessage, kind: str) -> None:
    assert body["v"] == 1
    assert body["k"] == kind
    assert (body["run"], body["task"], body["attempt"]) == (msg.run_id, msg.task, msg.attempt)
    assert isinstance(body["worker"], str) and body["worker"]
    assert isinstance(body["ts"], float), f"ts must be a float: {body['ts']!r}"
    assert isinstance(body["started"], float), f"started must be a float: {body.get('started')!r}"
    assert body["started"] <= body["ts"] + 0.001


async def test_echo_succeeds_with_its_payload_and_the_task_is_acked(conf: Conformance) -> None:
    await conf.start()
    msg = await conf.publish(conf.task("echo", PAYLOAD, attempt=3))

    body = await conf.result(msg)
    _check_result_shape(body, msg, "task.succeeded")
    assert body["result"] == PAYLOAD
    assert body["attempt"] == 3  # echoed back, whatever it is
    (reply,) = [m for m in await conf.replies(msg) if m.headers and m.headers[MSG_ID].endswith(":result")]
    assert reply.headers is not None and reply.headers[MSG_ID] == f"{msg.run_id}:t:3:result"
    await conf.drained()


async def test_a_failure_is_reported_with_its_error_and_not_retryable(conf: Conformance) -> None:
    await conf.start()
    msg = await conf.publish(conf.task("fail", {"message": "disk on fire"}, priority=7))

    body = await conf.result(msg)
    _check_result_shape(body, msg, "task.failed")
    assert body["error"] == "disk on fire"
    assert body["retryable"] is False
    assert body.get("retry_delay") is None
    await conf.drained()


async def test_consumers_have_the_reference_config(conf: Conformance) -> None:
    """Workers of any language share the durable consumers: the server refuses to create one that exists under
    another config, so each must be made exactly as actors/worker.py makes it."""
    await conf.start()
    routes = [(5, "echo"), (9, "fail")]
    for priority, handler in routes:
        await conf.publish(conf.task(handler, {"message": "x"}, priority=priority))
    await conf.drained()
    for priority, handler in routes:
        want = task_consumer_config(QUEUE, priority, handler)
        have = (await conf.js.consumer_info(S.TASKS, S.task_consumer(QUEUE, priority, handler))).config
        for name in ("durable_name", "filter_subject", "ack_policy", "deliver_policy", "ack_wait", "max_deliver",
                     "max_ack_pending"):  # fmt: skip
            assert getattr(have, name) == getattr(want, name), f"{have.durable_name}: {name}"


async def test_priority_nine_is_served_first(conf: Conformance) -> None:
    run_id = "01JCONFPRIORITY00000000000"
    order = [(0, "low-1"), (0, "low-2"), (5, "mid"), (0, "low-3"), (9, "high")]
    for priority, task in order:  # all queued before the worker starts: it finds them at once
        await conf.publish(conf.task("echo", task, priority=priority, run_id=run_id, task=task))
    await conf.start(concurrency=1)
    await conf.drained()

    replies = await conf.replies(conf.task("echo", None, run_id=run_id))
    results = [m for m in replies if m.headers and m.headers[MSG_ID].endswith(":result")]
    done = [msgpack.unpackb(m.data, raw=False)["task"] for m in results]  # in the order they were stored
    assert done[:2] == ["high", "mid"], done
    assert sorted(done[2:]) == ["low-1", "low-2", "low-3"], done


async def test_malformed_tasks_are_dead_lettered_and_never_redelivered(conf: Conformance) -> None:
    await conf.start()
    good = conf.task("echo", {"ok": True})
    fields = msgpack.unpackb(encode_task(good), raw=False)
    subject = S.task_subject(QUEUE, 5, "echo")
    bad: dict[str, bytes] = {
        "garbage": b"\xc1\x00garbage\xff",
        "empty": b"",
        "not a map": pack([1, 2, 3]),
        "json array": b"[1, 2]",
        "wrong version": pack({**fields, "v": 2}),
        "missing reply": pack({k: v for k, v in fields.items() if k != "reply"}),
        "reply elsewhere": pack({**fields, "reply": "somewhere.else"}),
        "handler of another subject": pack({**fields, "handler": "fail"}),
    }
    for data in bad.values():
        await conf.publish_raw(subject, data)
    await conf.publish(good)  # after them, on the same consumer: the worker goes on

    assert (await conf.result(good))["result"] == {"ok": True}
    await conf.drained()

    async def all_dead() -> bool:
        letters = await invalid_letters(conf.js)
        assert len(letters) == len(bad), f"{len(letters)} dead letters, expected {len(bad)}"
        return True

    await until(all_dead)
    letters = await invalid_letters(conf.js)
    assert sorted(m.data or b"" for m in letters) == sorted(bad.values())
    for letter in letters:
        assert letter.headers is not None and letter.headers.get("Jd-Reason"), letter.headers
    info = await conf.js.consumer_info(S.TASKS, S.task_consumer(QUEUE, 5, "echo"))
    assert info.num_redelivered == 0 and info.num_ack_pending == 0
    assert info.delivered.consumer_seq == len(bad) + 1  # each delivered once
    assert await conf.results(good) and len(await invalid_letters(conf.js)) == len(bad)


async def _deliver_once_and_nak(conf: Conformance, *msgs: TaskMessage) -> None:
    """Take `msgs` (queued, of one handler and priority) from their consumer as a worker that dies would, and hand
    them back, as AckWait would 30 s later."""
    priority, handler = msgs[0].priority, msgs[0].handler
    await conf.js.add_consumer(S.TASKS, config=task_consumer_config(QUEUE, priority, handler))
    sub = await conf.js.pull_subscribe_bind(durable=S.task_consumer(QUEUE, priority, handler), stream=S.TASKS)
    try:
        taken = await sub.fetch(len(msgs), timeout=5)
        assert sorted(msgpack.unpackb(m.data, raw=False)["run"] for m in taken) == sorted(m.run_id for m in msgs)
        for m in taken:
            assert m.metadata.num_delivered == 1
            await m.nak()
    finally:
        await sub.unsubscribe()


async def test_a_redelivered_task_runs_and_reports_once(conf: Conformance) -> None:
    msg = await conf.publish(conf.task("echo", {"again": 1}))
    await _deliver_once_and_nak(conf, msg)
    await conf.start()

    body = await conf.result(msg)
    assert body["k"] == "task.succeeded" and body["result"] == {"again": 1}
    await conf.drained()
    info = await conf.js.consumer_info(S.TASKS, S.task_consumer(QUEUE, 5, "echo"))
    assert info.delivered.consumer_seq == 2  # the nak'd delivery, then the worker's
    assert len(await conf.results(msg)) == 1


async def test_a_stale_redelivery_is_acked_without_running(conf: Conformance) -> None:
    """Optional in the protocol (a worker that skips it only runs a stale attempt again); both reference workers
    do it. A third implementation is checked only with JETDAG_CONFORMANCE_STALE=1."""
    if conf.impl.name == "custom" and os.environ.get("JETDAG_CONFORMANCE_STALE") != "1":
        pytest.skip("the stale-redelivery check is optional: set JETDAG_CONFORMANCE_STALE=1 to run it")
    kv = await conf.js.key_value(S.RUNS_KV)
    plain = conf.task("echo", {"stale": "plain"})
    packed = conf.task("echo", {"stale": "compressed"}, task="big")
    for msg in (plain, packed):
        await conf.publish(msg)
    await _deliver_once_and_nak(conf, plain, packed)
    # The runs moved on meanwhile: attempt 2 is the current one. A snapshot over 64 KiB is stored as 0xc1 and a
    # raw deflate stream (engine/stores/packing.py); the workers must read both forms.
    snapshot = {"status": "running", "tasks": {"t": {"attempt": 2, "status": "queued"}}}
    await kv.put(plain.run_id, pack(snapshot))
    big = {"status": "running", "tasks": {"big": {"attempt": 2, "status": "running"}}, "pad": "x" * 70_000}
    await kv.put(packed.run_id, b"\xc1" + deflate(pack(big), final=True))
    assert zlib.decompress((await kv.get(packed.run_id)).value[1:], -15) == pack(big)  # type: ignore[index]

    await conf.start()
    await conf.drained()
    assert await conf.results(plain) == [] and await conf.results(packed) == []  # acked, and never run


async def test_an_interrupt_stops_a_running_attempt(conf: Conformance) -> None:
    await conf.start()
    msg = await conf.publish(conf.task("sleep", {"seconds": 30}))

    async def listed() -> bool:
        _, info = await conf.entry()
        return any((r["run"], r["task"], r["attempt"]) == (msg.run_id, msg.task, msg.attempt) for r in info["running"])

    await until(listed, timeout=5)
    await conf.interrupt(msg)
    body = await conf.result(msg, timeout=5)
    _check_result_shape(body, msg, "task.failed")
    assert body["error"] == CANCELLED
    assert body["retryable"] is False
    await conf.drained(timeout=5)


async def test_it_takes_no_more_tasks_than_its_concurrency(conf: Conformance) -> None:
    await conf.start(concurrency=2)
    msgs = [await conf.publish(conf.task("sleep", {"seconds": 30}, task=f"s{i}")) for i in range(3)]

    async def running(n: int) -> list[dict[str, Any]] | None:
        _, info = await conf.entry()
        return info["running"] if len(info["running"]) == n else None

    first = await until(lambda: running(2), timeout=5)
    info = await conf.js.consumer_info(S.TASKS, S.task_consumer(QUEUE, 5, "sleep"))
    assert (info.num_ack_pending, info.num_pending) == (2, 1), "the third task must wait in the stream"

    # An interrupt frees a slot: the third task starts.
    (stopped,) = [m for m in msgs if m.task == first[0]["task"]]
    await conf.interrupt(stopped)
    assert (await conf.result(stopped, timeout=5))["error"] == CANCELLED
    (third,) = [m.task for m in msgs if m.task not in {r["task"] for r in first}]

    async def third_runs() -> bool:
        now = await running(2)
        return now is not None and third in {r["task"] for r in now}

    await until(third_runs, timeout=5)


async def test_an_interrupted_attempt_that_arrives_later_is_acked_without_running(conf: Conformance) -> None:
    await conf.start()
    msg = conf.task("sleep", {"seconds": 30}, attempt=2)
    await conf.interrupt(msg)  # the worker is subscribed: its first beat came after its subscriptions
    other = conf.task("echo", "after")  # a core-NATS interrupt and a JetStream publish: make sure of the order
    await conf.publish(other)
    await conf.result(other)
    await conf.publish(msg)
    await conf.drained(timeout=5)  # acked within seconds: the 30 s sleep never ran
    assert await conf.results(msg) == []


async def test_heartbeat_lists_the_worker_and_a_clean_stop_deletes_it(conf: Conformance) -> None:
    worker = await conf.start(concurrency=3)
    key, info = await conf.entry()
    assert info["v"] == 1
    assert info["id"] == key
    assert QUEUE in info["queues"]
    assert set(HANDLERS) <= set(info["handlers"])
    assert isinstance(info["host"], str) and info["host"]
    assert isinstance(info["pid"], int)
    assert info["concurrency"] == 3
    assert info["interval"] == HEARTBEAT
    assert isinstance(info["started"], float) and isinstance(info["beat"], float)
    assert isinstance(info["done"], int) and info["running"] == []
    if "handlers_version" in info:
        assert isinstance(info["handlers_version"], str)

    async def beats_on() -> bool:
        return (await conf.entry())[1]["beat"] > info["beat"]

    await until(beats_on, timeout=5 * HEARTBEAT)

    # It beats on, counts what it did, and names what it runs, with the reply it was given.
    msg = await conf.publish(conf.task("sleep", {"seconds": 1.0}))

    async def running() -> dict[str, Any] | None:
        _, now = await conf.entry()
        return next((r for r in now["running"] if r["run"] == msg.run_id), None)

    entry = await until(running, timeout=5)
    assert (entry["task"], entry["attempt"], entry["reply"]) == (msg.task, msg.attempt, msg.reply)
    assert isinstance(entry["started"], float)

    # SIGTERM while it runs: the task finishes, the process exits 0, and the heartbeat is gone.
    worker.signal(signal.SIGTERM)
    code = await _exit_code(worker)
    assert code == 0, worker.log()
    body = await conf.result(msg)
    assert body["k"] == "task.succeeded" and body.get("result") is None  # a nil field may be left out
    await conf.drained(timeout=1)
    kv = await conf.js.key_value(S.WORKERS_KV)
    with pytest.raises(KeyNotFoundError):
        await kv.get(key)


async def _exit_code(worker: WorkerProcess) -> int:
    """The worker's exit code, polled (its drain takes as long as its running task)."""

    async def gone() -> bool:
        return worker.proc.poll() is not None

    await until(gone, timeout=15, interval=0.05)
    code: int = worker.proc.returncode
    return code
