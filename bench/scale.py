"""Scale: the engine's CPU per task and its peak memory for one run of a big DAG.

nats-server, `jetdag engine` and W x `jetdag worker --concurrency C` as separate processes, a fresh
stack per case. Each case is one run of a DAG of N noop tasks in one of two shapes:

- wide: root -> N-2 tasks in parallel -> join;
- deep: `--chains` chains side by side (layer k of each chain depends on layer k-1 of the same chain),
  N/chains tasks long.

The engine's CPU seconds (utime + stime of /proc/<pid>/stat) are read just before the submit and
once the run's final step record has arrived here; their difference over N is the CPU per task. Its
peak RSS is VmHWM of /proc/<pid>/status at the end (the process is fresh, so that peak is this run's
or start-up's). Also recorded: the definition's size as stored in `jd_defs`, the run snapshot's size
in `jd_runs` at the end (rewritten on every step of the run; both deflate-compressed above 64 KiB,
engine/stores/packing.py) and the largest step record, against NATS's max_payload of 8 MB
(engine/nats/server.py).

    jetdag bench scale [--sizes 1000 10000] [--huge] [--shapes wide deep] [--chains 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import harness
from harness import cpu_seconds, status_mb

from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.stores import packing

HUGE = 100_000


def deep_spec(name: str, tasks: int, chains: int) -> WorkflowSpec:
    """`chains` chains of tasks // chains noops, side by side."""
    length = max(1, tasks // chains)
    return WorkflowSpec(
        name,
        tuple(
            TaskSpec(f"c{c}_{k}", "noop", depends_on=(f"c{c}_{k - 1}",) if k else ())
            for k in range(length)
            for c in range(chains)
        ),
    )


async def case(spec: WorkflowSpec, args: argparse.Namespace) -> dict[str, Any]:
    async with harness.stack(args.workers, args.concurrency) as s, await Client.connect(s.url) as client:
        engine = s.procs["engine"].pid
        workers = [p.pid for n, p in s.procs.items() if n.startswith("worker")]
        steps = await s.steps()
        await client.apply(spec)  # packing.ValueTooLarge names the workflow, its size and the limit
        rss_idle = status_mb(engine, "VmRSS")
        cpu0, wcpu0 = cpu_seconds(engine), sum(cpu_seconds(w) for w in workers)
        start = time.perf_counter()
        run = await client.submit(spec.name)
        await steps.wait([run], args.timeout)
        wall = steps.finished[run] - start
        cpu, wcpu = cpu_seconds(engine) - cpu0, sum(cpu_seconds(w) for w in workers) - wcpu0
        peak = status_mb(engine, "VmHWM")
        snapshot = await (await s.js.key_value(S.RUNS_KV)).get(run)
    n = len(spec.tasks)
    return {
        "wall_s": round(wall, 2),
        "tasks_per_s": round(n / wall, 1),
        "engine_cpu_s": round(cpu, 2),
        "engine_cpu_ms_per_task": round(cpu * 1000 / n, 3),
        "workers_cpu_ms_per_task": round(wcpu * 1000 / n, 3),
        "engine_rss_idle_mb": round(rss_idle, 1),
        "engine_peak_rss_mb": round(peak, 1),
        "snapshot_kb": round(len(snapshot.value or b"") / 1024, 1),
        "largest_step_kb": round(steps.largest / 1024, 1),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [*args.sizes, *([HUGE] if args.huge and HUGE not in args.sizes else [])]
    cases = []
    for size in sizes:
        for shape in args.shapes:
            name = f"bench_scale_{shape}_{size}"
            spec = harness.fan_spec(name, size - 2) if shape == "wide" else deep_spec(name, size, args.chains)
            about = {"shape": shape, "tasks": len(spec.tasks)}
            about["def_kb"] = round(len(packing.encode(spec.to_dict())) / 1024, 1)  # as stored: compressed
            try:
                cases.append({**about, **await case(spec, args)})
            except Exception as exc:  # a case too big for the engine is a finding, not the end of the benchmark
                print(f"scale: {shape} {size:,} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                cases.append({**about, "error": f"{type(exc).__name__}: {exc}"})
    return harness.record("scale", workers=args.workers, concurrency=args.concurrency, chains=args.chains, cases=cases)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, "scale")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000], help="tasks per DAG (1000 10000)")
    parser.add_argument("--huge", action="store_true", help=f"also {HUGE:,} tasks")
    parser.add_argument("--shapes", nargs="+", choices=["wide", "deep"], default=["wide", "deep"])
    parser.add_argument("--chains", type=int, default=100, help="parallel chains of the deep shape (default 100)")
    harness.add_workers(parser)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one run may take (default 3600)")
    args = parser.parse_args(argv)
    if min(args.sizes) < 3 or args.chains < 1:
        parser.error("--sizes must be at least 3 and --chains at least 1")
    rec = harness.run(measure(args))
    title = (
        f"scale: one run of a DAG of N noops, {rec['workers']} workers x {rec['concurrency']}; wide = root -> "
        f"N-2 -> join, deep = {rec['chains']} chains side by side; engine CPU and peak RSS"
    )
    columns = ["shape", "tasks", "wall s", "tasks/s", "engine CPU s", "CPU ms/task", "peak RSS MB",
               "def KB", "snapshot KB", "largest step KB"]  # fmt: skip
    keys = ["wall_s", "tasks_per_s", "engine_cpu_s", "engine_cpu_ms_per_task", "engine_peak_rss_mb",
            "def_kb", "snapshot_kb", "largest_step_kb"]  # fmt: skip
    errors = any("error" in c for c in rec["cases"])
    rows = [[c["shape"], c["tasks"], *(c.get(k, "-") for k in keys), *([c.get("error", "")] if errors else [])]
            for c in rec["cases"]]  # fmt: skip
    columns += ["error"] if errors else []
    harness.finish(args, rec, title, columns, rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
