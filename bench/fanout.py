"""Fan-out: seconds from submit to success of one run of root -> N parallel noops -> join.

nats-server, `jetdag engine` and W x `jetdag worker --concurrency C` as separate processes. The
workflow (`root`, `--width` noop tasks that depend on it, and `join` that depends on all of them) is
applied once and run `--reps` times one after the other, after `--warmup` uncounted runs. Each run
is timed from just before `Client.submit` to the arrival of the engine's step record that ends it
(a core subscription on `jd.evt.*.*.step`). With the default 2 x 2 worker slots the N tasks queue
up: the figure is the whole path's cost per task more than any one task's latency.

    jetdag bench fanout [--width 500] [--reps 5] [--warmup 1] [--workers 2] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import harness
from harness import percentile

from jetdag.engine.client import Client


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    spec = harness.fan_spec("bench_fanout", args.width)
    took: list[float] = []
    async with harness.stack(args.workers, args.concurrency) as s, await Client.connect(s.url) as client:
        steps = await s.steps()
        await client.apply(spec)
        for i in range(args.warmup + args.reps):
            submitted = time.perf_counter()
            run = await client.submit(spec.name)
            await steps.wait([run], args.timeout)
            if i >= args.warmup:
                took.append(steps.finished[run] - submitted)
    p50 = percentile(took, 50)
    return harness.record(
        "fanout",
        width=args.width,
        tasks=len(spec.tasks),
        reps=args.reps,
        workers=args.workers,
        concurrency=args.concurrency,
        p50_s=round(p50, 3),
        min_s=round(min(took), 3),
        max_s=round(max(took), 3),
        tasks_per_s=round(len(spec.tasks) / p50, 1),
        runs_s=[round(t, 3) for t in took],
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, "fanout")
    parser.add_argument("--width", type=int, default=500, help="parallel tasks between root and join (default 500)")
    parser.add_argument("--reps", type=int, default=5, help="runs measured, one after the other (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="runs before them, not counted (default 1)")
    harness.add_workers(parser)
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take (default 300)")
    args = parser.parse_args(argv)
    if args.width < 1 or args.reps < 1:
        parser.error("--width and --reps must be at least 1")
    rec = harness.run(measure(args))
    title = (
        f"fanout: root -> {rec['width']:,} noops -> join, {rec['reps']} runs, {rec['workers']} workers x "
        f"{rec['concurrency']}; seconds from submit to run succeeded"
    )
    rows = [[rec["p50_s"], rec["min_s"], rec["max_s"], rec["tasks_per_s"]]]
    harness.finish(args, rec, title, ["p50 s", "min s", "max s", "tasks/s at p50"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
