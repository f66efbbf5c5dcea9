"""taskiq + taskiq-nats (JetStream), a peer of `jetdag bench compare`: its workers' broker and the runner.

Runs with the taskiq peer's interpreter (bench/peers/taskiq/.venv, made by bench/compare.py), never
jetdag's. compare.py starts a nats-server with JetStream and the workers, then this runner, which runs
a warm-up, measures, and prints one JSON line with its figures:

    taskiq worker taskiq_peer:broker --workers 2      (cwd bench/compare)
    python taskiq_peer.py WORKLOAD [-n N] [--reps R] [--warmup W]

Broker: `PullBasedJetStreamBroker` on the nats-server at $BENCH_NATS_URL, with taskiq-nats's
defaults (one message per pull, $BENCH_TASKIQ_BATCH to change it: a larger batch without a pull
timeout leaves a lone message waiting for the batch to fill, and with a timeout the worker dies on
its first idle pull, taskiq-nats 0.7.0 catching nats.errors.TimeoutError where nats-py raises
asyncio.TimeoutError). Results: taskiq-nats's `NATSObjectStoreResultBackend` (a JetStream object
store). chain and fanout are taskiq-pipelines: `call_next` x (steps - 1); and `items` -> `map(noop)`
(its waiting task polls every result each $BENCH_TASKIQ_CHECK_INTERVAL s, taskiq-pipelines' 0.5 by
default) -> `call_next(noop)`, fan-out runs 6 s apart (see `fanout`).

A result counts as done when its object's metadata is published to the object store (a core NATS
subscription on `$O.taskiq_results.M.>`, timestamped on arrival, as jetdag's benchmarks watch its step
records): taskiq's own `wait_result` polls each task's object, too slow a probe for 5,000 tasks. A
sample of results is then read back to check that none failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import nats
from peerkit import arguments, chain_figures, emit, fanout_figures, runs_figures, throughput_figures
from taskiq import AsyncTaskiqTask, TaskiqResult, async_shared_broker
from taskiq_nats import NATSObjectStoreResultBackend, PullBasedJetStreamBroker
from taskiq_pipelines import Pipeline, PipelineMiddleware

URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
BATCH = int(os.environ.get("BENCH_TASKIQ_BATCH", "1"))
CHECK_INTERVAL = float(os.environ.get("BENCH_TASKIQ_CHECK_INTERVAL", "0.5"))
BUCKET = "taskiq_results"
PAUSE = 6.0

broker = (
    PullBasedJetStreamBroker(URL, pull_consume_batch=BATCH)
    .with_result_backend(NATSObjectStoreResultBackend(URL, bucket_name=BUCKET))
    .with_middlewares(PipelineMiddleware())
)
async_shared_broker.default_broker(broker)  # taskiq-pipelines' map step kicks a shared task


@broker.task(task_name="noop")
async def noop(_previous: Any = None) -> None:
    return None


@broker.task(task_name="items")
async def items(n: int) -> list[int]:
    return list(range(n))


class Results:
    """When each task's result object was stored, seen on a core subscription to the bucket's metadata."""

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self._waiting: set[str] = set()
        self._all = asyncio.Event()

    async def on_meta(self, msg: Any) -> None:
        name = json.loads(msg.data)["name"]
        self.done.setdefault(name, time.perf_counter())
        self._waiting.discard(name)
        if not self._waiting:
            self._all.set()

    async def wait(self, ids: Iterable[str], timeout: float) -> None:
        self._waiting = {i for i in ids if i not in self.done}
        self._all = asyncio.Event()
        if self._waiting:
            try:
                await asyncio.wait_for(self._all.wait(), timeout)
            except TimeoutError:
                raise TimeoutError(f"{len(self._waiting)} results not stored after {timeout:g} s") from None


async def check(tasks: list[AsyncTaskiqTask[Any]]) -> None:
    """Read back a few results: none is an error. Read directly from the bucket's stream: the backend's
    `get_result` opens an ephemeral consumer per read, which lingers for seconds, and nats-server allows a
    stream 1,000 of them (see fanout)."""
    backend: Any = broker.result_backend
    for task in tasks[:: max(1, len(tasks) // 10)]:
        info = await backend.object_store.get_info(task.task_id)
        chunk = await backend.nats_jetstream.get_last_msg(f"OBJ_{BUCKET}", f"$O.{BUCKET}.C.{info.nuid}")
        result: TaskiqResult[Any] = TaskiqResult.model_validate(backend.serializer.loadb(chunk.data))
        if result.is_err:
            raise RuntimeError(f"task {task.task_id} failed: {result.error}")


async def burst(results: Results, n: int, timeout: float) -> tuple[float, list[float], list[AsyncTaskiqTask[Any]]]:
    """n x noop.kiq() at once (publishes in flight together), then every result stored."""
    sent: dict[str, float] = {}

    async def one() -> AsyncTaskiqTask[Any]:
        t = time.perf_counter()
        task = await noop.kiq()
        sent[task.task_id] = t
        return task

    start = time.perf_counter()
    tasks = await asyncio.gather(*(one() for _ in range(n)))
    await results.wait(sent, timeout)
    return max(results.done[i] for i in sent) - start, [results.done[i] - t for i, t in sent.items()], tasks


async def throughput(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    await burst(results, min(500, args.n), args.timeout)
    wall, took, tasks = await burst(results, args.n, args.timeout)
    await check(tasks)
    return throughput_figures(args.n, wall, took)


async def repeat(
    args: argparse.Namespace,
    results: Results,
    kick: Callable[[], Awaitable[AsyncTaskiqTask[Any]]],
    pause: float = 0.0,
) -> list[float]:
    """Seconds from kick to the final task's result stored, for --reps runs after --warmup, one after the other
    (`pause` seconds apart, not counted)."""
    took = []
    for i in range(args.warmup + args.reps):
        if i:
            await asyncio.sleep(pause)
        start = time.perf_counter()
        task = await kick()
        await results.wait([task.task_id], args.timeout)
        await check([task])
        if i >= args.warmup:
            took.append(results.done[task.task_id] - start)
    return took


def chain_pipeline(steps: int) -> Pipeline[Any, Any]:
    pipe: Pipeline[Any, Any] = Pipeline(broker, noop)
    for _ in range(steps - 1):
        pipe = pipe.call_next(noop)
    return pipe


async def chain(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    pipe = chain_pipeline(args.n)
    took = await repeat(args, results, pipe.kiq)
    return chain_figures(args.n, args.reps, took)


async def fanout(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    pipe = Pipeline(broker, items).map(noop, check_interval=CHECK_INTERVAL).call_next(noop)
    # The map step's waiting task reads every result through the backend, an ephemeral consumer per read that
    # nats-server keeps for 5 s of inactivity, at most 1,000 per stream: runs 6 s apart start with none left.
    took = await repeat(args, results, lambda: pipe.kiq(args.n), pause=PAUSE)
    return fanout_figures(args.n, args.reps, took, args.n + 2)


async def batch(results: Results, n: int, timeout: float) -> tuple[float, list[float]]:
    # A pipeline per run: `Pipeline.kiq` sets the ids of its steps and reads the last one back after publishing.
    pipes = [chain_pipeline(3) for _ in range(n)]
    start = time.perf_counter()
    tasks = await asyncio.gather(*(pipe.kiq() for pipe in pipes))
    await results.wait([t.task_id for t in tasks], timeout)
    await check(tasks)
    ends = [results.done[t.task_id] - start for t in tasks]
    return max(ends), ends


async def runs(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    if args.warmup:
        await batch(results, args.warmup, args.timeout)
    wall, ends = await batch(results, args.n, args.timeout)
    return runs_figures(args.n, wall, ends)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    results = Results()
    nc = await nats.connect(URL)
    try:
        await nc.subscribe(f"$O.{BUCKET}.M.>", cb=results.on_meta)
        await nc.flush()
        await broker.startup()
        try:
            workload = {"throughput": throughput, "chain": chain, "fanout": fanout, "runs": runs}[args.workload]
            return await workload(args, results)
        finally:
            await broker.shutdown()
    finally:
        await nc.close()


def main() -> int:
    args = arguments(__doc__, ("throughput", "chain", "fanout", "runs"))
    figures = asyncio.run(measure(args))
    setup = (
        f"taskiq worker --workers 2 (100 async tasks each), PullBasedJetStreamBroker pull batch {BATCH}, "
        f"NATSObjectStoreResultBackend, map check_interval {CHECK_INTERVAL:g} s"
    )
    return emit(figures, ("taskiq", "taskiq-nats", "taskiq-pipelines", "nats-py"), setup)


if __name__ == "__main__":
    sys.exit(main())
