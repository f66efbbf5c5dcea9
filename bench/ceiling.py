"""Ceiling: what nats-py and nats-server do on this machine with no jetdag in between.

One Python process (nats-py, like every jetdag role) against a nats-server with file storage, in
the same harness as the workloads. Three figures, each the best a Python client gets here:

- publish: JetStream publishes acknowledged by the stream (publish_async, 256 in flight), per second;
- cycle: a bare task cycle per second: a task published, pulled (batches of 256), its result
  published and acknowledged, the task acked; what a task queue with no engine (taskiq) does;
- kv: compare-and-set updates of KV keys (256 in flight), per second: a run snapshot's write.

A jetdag no-op task costs about ten such operations (RESULTS.md): dividing `publish` by ten bounds
what one engine process can do for single-task runs, whatever the engine's own code costs.

    jetdag bench ceiling [-n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from nats.js import JetStreamContext
from nats.js import api as js_api

from jetdag.engine.nats.server import NatsServer
from jetdag.engine.nats.setup import close, connect

WINDOW = 256  # operations in flight at once


def cpu() -> float:
    times = os.times()
    return times.user + times.system


async def publishes(js: JetStreamContext, n: int) -> float:
    await js.add_stream(name="CEIL_PUB", subjects=["ceil.pub"], storage=js_api.StorageType.FILE)
    start = time.perf_counter()
    for i in range(0, n, WINDOW):
        futures = [await js.publish_async("ceil.pub", b"x" * 64) for _ in range(min(WINDOW, n - i))]
        await asyncio.gather(*futures)
    return time.perf_counter() - start


async def cycles(js: JetStreamContext, n: int) -> float:
    await js.add_stream(name="CEIL_TASKS", subjects=["ceil.task"], storage=js_api.StorageType.FILE)
    await js.add_stream(name="CEIL_RESULTS", subjects=["ceil.result"], storage=js_api.StorageType.FILE)
    sub = await js.pull_subscribe("ceil.task", durable="ceil_worker", stream="CEIL_TASKS")
    start = time.perf_counter()

    async def produce() -> None:
        for i in range(0, n, WINDOW):
            futures = [await js.publish_async("ceil.task", b"t" * 64) for _ in range(min(WINDOW, n - i))]
            await asyncio.gather(*futures)

    async def work() -> None:
        done = 0
        while done < n:
            try:
                msgs = await sub.fetch(WINDOW, timeout=0.05)
            except TimeoutError:
                continue
            results = [await js.publish_async("ceil.result", b"r" * 64) for _ in msgs]
            await asyncio.gather(*results)
            for msg in msgs:
                await msg.ack()
            done += len(msgs)

    await asyncio.gather(produce(), work())
    return time.perf_counter() - start


async def kv_updates(js: JetStreamContext, n: int) -> float:
    kv = await js.create_key_value(bucket="ceil_kv", history=1)
    revisions = {f"k{i}": await kv.create(f"k{i}", b"0") for i in range(WINDOW)}
    start = time.perf_counter()
    for i in range(0, n, WINDOW):
        keys = list(revisions)[: min(WINDOW, n - i)]
        new = await asyncio.gather(*(kv.update(k, b"x" * 512, last=revisions[k]) for k in keys))
        revisions.update(zip(keys, new, strict=True))
    return time.perf_counter() - start


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"n": args.n}
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        nc = await connect(server.url, "bench ceiling")
        try:
            js = nc.jetstream()
            for name, step, ops in (("publish", publishes, 1), ("cycle", cycles, 4), ("kv", kv_updates, 1)):
                before = cpu()
                wall = await step(js, args.n)
                figures[f"{name}_per_s"] = round(args.n / wall, 1)
                # client CPU per JetStream operation: a cycle is 2 publishes, 1 delivery and 1 ack
                figures[f"{name}_client_us_per_op"] = round((cpu() - before) * 1e6 / (args.n * ops), 1)
        finally:
            await close(nc)
    figures["implied_jetdag_tasks_per_s"] = round(figures["publish_per_s"] / 10, 1)
    return harness.record("ceiling", **figures)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, "ceiling")
    parser.add_argument("-n", type=int, default=20000, help="operations per figure (default 20000)")
    args = parser.parse_args(argv)
    if args.n < WINDOW:
        parser.error(f"-n must be at least {WINDOW}")
    rec = harness.run(measure(args))
    title = f"ceiling: nats-py + nats-server (file storage) alone, {rec['n']:,} operations each, {WINDOW} in flight"
    rows = [
        ["publish (acked)", rec["publish_per_s"], rec["publish_client_us_per_op"]],
        ["task cycle (publish, pull, result, ack)", rec["cycle_per_s"], rec["cycle_client_us_per_op"]],
        ["KV compare-and-set update", rec["kv_per_s"], rec["kv_client_us_per_op"]],
        ["jetdag at ~10 operations per task", rec["implied_jetdag_tasks_per_s"], ""],
    ]
    harness.finish(args, rec, title, ["operation", "per s", "client µs per op"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
