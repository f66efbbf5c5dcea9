"""Throughput: N independent no-op tasks through the full path, as separate processes.

nats-server + `jetdag engine` + W x `jetdag worker`, each its own process. The benchmark submits
N single-task runs at once and times each from its submission to the engine's final step record for
it (a core subscription on `jd.evt.*.*.step`). `--via client` (the default) submits with
`Client.enqueue("noop")`, all awaited together, as a Python program does (and as Celery's peer calls
`delay()`); `--via nats` publishes to `jd.enqueue.default.noop` pipelined, as a program without the
client does, one hop more (through the inbox, JD_INBOX).

    jetdag bench throughput [-n 5000] [--via client|nats] [--workers 2] [--concurrency 256] [--durability strict]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import harness
from harness import Stack, Steps, ms, percentile

from jetdag.engine import subjects as S
from jetdag.engine.client import RUN_ID_HEADER, Client
from jetdag.engine.ids import new_run_id
from jetdag.engine.messages import MSG_ID


async def burst(s: Stack, steps: Steps, n: int, timeout: float, client: Client | None = None) -> list[float]:
    """Submit n runs at once (with `client`, else by publishing); the seconds each took to its final step."""
    sent: dict[str, float] = {}
    if client is not None:

        async def enqueue() -> None:
            run_id = new_run_id()
            sent[run_id] = time.perf_counter()
            await client.enqueue("noop", run_id=run_id)

        await asyncio.gather(*(enqueue() for _ in range(n)))
    else:
        futures = []
        for _ in range(n):
            run_id = new_run_id()
            headers = {MSG_ID: run_id, RUN_ID_HEADER: run_id}
            sent[run_id] = time.perf_counter()
            futures.append(await s.js.publish_async(S.enqueue_subject("default", "noop"), b"\x80", headers=headers))
        await asyncio.gather(*futures)
    await steps.wait(sent, timeout)
    return [steps.finished[r] - t for r, t in sent.items()]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    async with harness.stack(args.workers, args.concurrency, args.durability) as s, await Client.connect(s.url) as c:
        client = c if args.via == "client" else None
        steps = await s.steps()
        await burst(s, steps, min(500, args.n), 60, client)  # warm-up: connections, consumers, caches
        cpu0, start = s.cpu(), time.perf_counter()
        took = await burst(s, steps, args.n, 300, client)
        wall = time.perf_counter() - start
        cpu = s.cpu_per(cpu0, args.n)
    return harness.record(
        "throughput",
        tasks=args.n,
        workers=args.workers,
        concurrency=args.concurrency,
        durability=args.durability,
        via=args.via,
        tasks_per_s=round(args.n / wall, 1),
        p50_ms=ms(percentile(took, 50)),
        p99_ms=ms(percentile(took, 99)),
        wall_s=round(wall, 3),
        **cpu,
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, "throughput")
    parser.add_argument("-n", type=int, default=5000, help="tasks (default 5000)")
    harness.add_workers(parser)
    parser.add_argument("--durability", choices=["fast", "strict"], default="fast")
    parser.add_argument("--via", choices=["client", "nats"], default="client", help="how runs are submitted")
    args = parser.parse_args(argv)
    rec = harness.run(measure(args))
    title = (
        f"throughput: {rec['tasks']:,} no-op tasks, {rec['workers']} workers x {rec['concurrency']}, "
        f"durability {rec['durability']}, via {rec['via']}"
    )
    kinds = [k for k in rec if k.startswith("cpu_ms_")]
    rows = [[rec["tasks_per_s"], rec["p50_ms"], rec["p99_ms"], rec["wall_s"], *(rec[k] for k in kinds)]]
    cpu_headers = [f"{k.removeprefix('cpu_ms_')} CPU ms/task" for k in kinds]
    harness.finish(args, rec, title, ["tasks/s", "p50 ms", "p99 ms", "wall s", *cpu_headers], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
