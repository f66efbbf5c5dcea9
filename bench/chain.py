"""Chain: the latency of one step of a linear chain of `noop` tasks, through the full path.

nats-server, `jetdag engine` and W x `jetdag worker --concurrency C` as separate processes. A workflow
of `--steps` noop tasks, each depending on the one before, is applied (`Client.apply`) and run
`--runs` times one after the other (`Client.submit`), after `--warmup` runs that are not counted.

A step is from a parent's result applied to its child's result applied: the engine applies the
parent's result and dispatches the child, a worker pulls and runs it and publishes its result, the
engine applies that. Each end is the arrival here of the engine's step record in which the task
succeeded (a core subscription on `jd.evt.*.*.step`, timestamped on arrival). The distribution is
over every step of every counted run; a run's total is from its submit to its final step record.

    jetdag bench chain [--steps 100] [--runs 5] [--warmup 1] [--workers 2] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from typing import Any

import harness
from harness import ms, percentile

from jetdag.engine.client import Client


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    spec = harness.chain_spec("bench_chain", args.steps)
    timeout = 30 + args.steps
    gaps: list[float] = []
    totals: list[float] = []
    async with harness.stack(args.workers, args.concurrency) as s, await Client.connect(s.url) as client:
        steps = await s.steps(tasks=True)
        await client.apply(spec)
        for i in range(args.warmup + args.runs):
            submitted = time.perf_counter()
            run = await client.submit(spec.name)
            await steps.wait([run], timeout)
            if i < args.warmup:
                continue
            done = [steps.succeeded[(run, t.name)] for t in spec.tasks]
            gaps += [child - parent for parent, child in itertools.pairwise(done)]
            totals.append(steps.finished[run] - submitted)
    return harness.record(
        "chain",
        steps=args.steps,
        runs=args.runs,
        workers=args.workers,
        concurrency=args.concurrency,
        samples=len(gaps),
        step_p50_ms=ms(percentile(gaps, 50)),
        step_p90_ms=ms(percentile(gaps, 90)),
        step_p99_ms=ms(percentile(gaps, 99)),
        step_mean_ms=ms(statistics.fmean(gaps)),
        step_max_ms=ms(max(gaps)),
        run_p50_s=round(percentile(totals, 50), 3),
        run_min_s=round(min(totals), 3),
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, "chain")
    parser.add_argument("--steps", type=int, default=100, help="tasks in the chain (default 100)")
    parser.add_argument("--runs", type=int, default=5, help="runs measured, one after the other (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="runs before them, not counted (default 1)")
    harness.add_workers(parser)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.runs < 1:
        parser.error("--steps must be at least 2 and --runs at least 1")
    rec = harness.run(measure(args))
    title = (
        f"chain: {rec['runs']} runs of a {rec['steps']}-step chain of noops, {rec['workers']} workers x "
        f"{rec['concurrency']}; one step = parent's result applied -> child's result applied"
    )
    columns = ["steps timed", "p50 ms", "p90 ms", "p99 ms", "mean ms", "max ms", "run p50 s", "run min s"]
    row = [rec[k] for k in ("samples", "step_p50_ms", "step_p90_ms", "step_p99_ms", "step_mean_ms", "step_max_ms")]
    harness.finish(args, rec, title, columns, [[*row, rec["run_p50_s"], rec["run_min_s"]]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
