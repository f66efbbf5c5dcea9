"""Runs: how many small runs per second, 500 runs of a 3-task chain submitted at once.

nats-server, `jetdag engine` and W x `jetdag worker --concurrency C` as separate processes. A
workflow of three noop tasks in a chain is applied; `-n` runs of it are submitted concurrently
(`Client.submit`, all awaited together), after a warm-up batch of `--warmup` runs. Runs/s is `-n`
over the seconds from the first submit to the arrival of the step record that ends the last run (a
core subscription on `jd.evt.*.*.step`); a run's latency is from the start of the batch to its end.

    jetdag bench runs [-n 500] [--warmup 50] [--workers 2] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import harness
from harness import ms, percentile

from jetdag.engine.client import Client


async def batch(
    client: Client, steps: harness.Steps, workflow: str, n: int, timeout: float
) -> tuple[float, list[float]]:
    """Submit n runs at once; the seconds until the last ended, and each run's seconds from the start."""
    start = time.perf_counter()
    runs = await asyncio.gather(*(client.submit(workflow) for _ in range(n)))
    await steps.wait(runs, timeout)
    ends = [steps.finished[r] - start for r in runs]
    return max(ends), ends


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    spec = harness.chain_spec("bench_runs", 3)
    async with harness.stack(args.workers, args.concurrency) as s, await Client.connect(s.url) as client:
        steps = await s.steps()
        await client.apply(spec)
        if args.warmup:
            await batch(client, steps, spec.name, args.warmup, args.timeout)
        wall, ends = await batch(client, steps, spec.name, args.n, args.timeout)
    return harness.record(
        "runs",
        runs=args.n,
        tasks_per_run=len(spec.tasks),
        workers=args.workers,
        concurrency=args.concurrency,
        runs_per_s=round(args.n / wall, 1),
        tasks_per_s=round(args.n * len(spec.tasks) / wall, 1),
        p50_ms=ms(percentile(ends, 50)),
        p99_ms=ms(percentile(ends, 99)),
        wall_s=round(wall, 3),
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, "runs")
    parser.add_argument("-n", type=int, default=500, help="runs submitted at once (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="runs of a batch before, not counted (default 50)")
    harness.add_workers(parser)
    parser.add_argument("--timeout", type=float, default=300, help="seconds the batch may take (default 300)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("-n must be at least 1")
    rec = harness.run(measure(args))
    title = (
        f"runs: {rec['runs']:,} runs of a 3-task noop chain submitted at once, {rec['workers']} workers x "
        f"{rec['concurrency']}"
    )
    rows = [[rec["runs_per_s"], rec["tasks_per_s"], rec["p50_ms"], rec["p99_ms"], rec["wall_s"]]]
    harness.finish(args, rec, title, ["runs/s", "tasks/s", "p50 ms", "p99 ms", "wall s"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
