"""Throughput: N independent no-op tasks through the full path, as separate processes.

nats-server + `jetdag engine` + W x `jetdag worker`, each its own process. The benchmark publishes
N single-task runs (`jd.enqueue.default.noop`) pipelined, and times each from its publish to the
engine's final step record for it (a core subscription on `jd.evt.*.*.step`).

    .venv/bin/python bench/throughput.py [-n 5000] [--workers 2] [--concurrency 256] [--durability strict]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import orjson
from machine import machine

from jetdag.engine import subjects as S
from jetdag.engine.client import RUN_ID_HEADER
from jetdag.engine.ids import new_run_id
from jetdag.engine.messages import MSG_ID
from jetdag.engine.nats.server import NatsServer
from jetdag.engine.nats.setup import Topology, close, connect, ensure

RESULTS = Path(__file__).parent / "results" / "throughput.jsonl"


def spawn(*args: str) -> subprocess.Popen[bytes]:
    code = "from jetdag.engine.cli import cli; cli()"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.DEVNULL)


async def wait_ready(js: Any, workers: int, timeout: float = 30.0) -> None:
    leases, live = await js.key_value(S.LEASES_KV), await js.key_value(S.WORKERS_KV)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if len(await leases.keys()) >= S.DEFAULT_PARTITIONS and len(await live.keys()) >= workers:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError("engine or workers did not come up")


async def burst(nc: Any, js: Any, n: int, timeout: float) -> dict[str, float]:
    """Publish n runs at once; the seconds each took from its publish to its final step."""
    sent: dict[str, float] = {}
    took: dict[str, float] = {}
    finished = asyncio.Event()

    async def on_step(msg: Any) -> None:
        step = msgpack.unpackb(msg.data)
        run = step["run"]
        if step["status"] == "succeeded" and run in sent and run not in took:
            took[run] = time.perf_counter() - sent[run]
            if len(took) == n:
                finished.set()

    sub = await nc.subscribe("jd.evt.*.*.step", cb=on_step)
    futures = []
    for _ in range(n):
        run_id = new_run_id()
        headers = {MSG_ID: run_id, RUN_ID_HEADER: run_id}
        sent[run_id] = time.perf_counter()
        futures.append(await js.publish_async(S.enqueue_subject("default", "noop"), b"\x80", headers=headers))
    await asyncio.gather(*futures)
    try:
        await asyncio.wait_for(finished.wait(), timeout)
    finally:
        await sub.unsubscribe()
    return took


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000)[int(p * 10) - 1] if len(values) > 1 else values[0]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp), sync_always=args.durability == "strict") as srv:
        nc = await connect(srv.url, "bench")
        js = nc.jetstream()
        await ensure(js, Topology())
        procs = [spawn("engine", "--nats", srv.url)]
        procs += [spawn("worker", "--nats", srv.url, "--concurrency", str(args.concurrency))
                  for _ in range(args.workers)]  # fmt: skip
        try:
            await wait_ready(js, args.workers)
            await burst(nc, js, min(500, args.n), timeout=60)  # warm-up: connections, consumers, caches
            start = time.perf_counter()
            took = await burst(nc, js, args.n, timeout=300)
            wall = time.perf_counter() - start
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)
            await close(nc)
    latencies = sorted(took.values())
    return {
        "bench": "throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": args.n,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "durability": args.durability,
        "tasks_per_s": round(args.n / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "wall_s": round(wall, 3),
        "machine": machine(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="tasks (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=256, help="tasks per worker at once (default 256)")
    parser.add_argument("--durability", choices=["fast", "strict"], default="fast")
    parser.add_argument("--json", action="store_true", help="print the record as JSON only")
    parser.add_argument("--no-save", action="store_true", help=f"do not append to {RESULTS}")
    args = parser.parse_args()
    record = asyncio.run(main(args))
    if not args.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("ab") as f:
            f.write(orjson.dumps(record) + b"\n")
    if args.json:
        print(orjson.dumps(record).decode())
    else:
        m = record["machine"]
        print(f"throughput: {record['tasks']} no-op tasks, {record['workers']} workers x {record['concurrency']}, "
              f"durability {record['durability']}")  # fmt: skip
        print(f"  {record['tasks_per_s']:>8} tasks/s   p50 {record['p50_ms']} ms   p99 {record['p99_ms']} ms"
              f"   ({record['wall_s']} s)")  # fmt: skip
        print(f"  on {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Python {m['python']}, {m['nats_server']}")
