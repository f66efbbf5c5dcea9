"""Prefect 3, a peer of `jetdag bench compare`: flows of no-op tasks against a local Prefect server.

Runs with the prefect peer's interpreter (bench/peers/prefect/.venv, made by bench/compare.py), never
jetdag's. compare.py starts `prefect server start` (SQLite in a temp PREFECT_HOME) and sets
PREFECT_API_URL; this runner runs a warm-up flow, measures, and prints one JSON line with its figures:

    python prefect_peer.py WORKLOAD [-n N] [--reps R] [--warmup W]

Prefect 3 runs a flow's tasks in the flow's own process, on its default task runner (a thread pool),
and reports their states to the server in the background: there are no worker processes, and the
figures are what the flow sees (a task's future resolved), not what the server has recorded by then.

- throughput: one flow, `noop.submit()` x N, timed from the first submit to the last future done
  (`as_completed`); a task's latency is from its submit to its future done.
- chain: one flow calling `noop()` N times in a row; per step = the flow's tasks' time / N.
- fanout: `root.submit()`, N x `noop.submit(wait_for=[root])`, `join.submit(wait_for=all)`.
- runs: not measured (500 concurrent small runs would be flow runs through deployments and workers).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from peerkit import arguments, chain_figures, emit, fanout_figures, throughput_figures
from prefect import flow, task
from prefect.futures import as_completed


@task
def noop() -> None:
    return None


@flow
def burst(n: int) -> tuple[float, list[float]]:
    sent: dict[Any, float] = {}
    futures = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        future = noop.submit()
        sent[future.task_run_id] = t
        futures.append(future)
    took = []
    for future in as_completed(futures):
        future.result()
        took.append(time.perf_counter() - sent[future.task_run_id])
    return time.perf_counter() - start, took


@flow
def chain_flow(steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        noop()
    return time.perf_counter() - start


@flow
def fan_flow(width: int) -> float:
    start = time.perf_counter()
    root = noop.submit()
    middle = [noop.submit(wait_for=[root]) for _ in range(width)]
    noop.submit(wait_for=middle).result()
    return time.perf_counter() - start


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    burst(min(500, args.n))
    wall, took = burst(args.n)
    return throughput_figures(args.n, wall, took)


def chain(args: argparse.Namespace) -> dict[str, Any]:
    took = [chain_flow(args.n) for _ in range(args.warmup + args.reps)][args.warmup :]
    return chain_figures(args.n, args.reps, took)


def fanout(args: argparse.Namespace) -> dict[str, Any]:
    took = [fan_flow(args.n) for _ in range(args.warmup + args.reps)][args.warmup :]
    return fanout_figures(args.n, args.reps, took, args.n + 2)


def main() -> int:
    workloads = {"throughput": throughput, "chain": chain, "fanout": fanout}
    args = arguments(__doc__, workloads, timeout=False)
    figures = workloads[args.workload](args)
    setup = "local server (SQLite), tasks on the flow's default thread-pool task runner"
    return emit(figures, ("prefect", "fastapi"), setup)


if __name__ == "__main__":
    sys.exit(main())
