"""Celery 5 + Redis, a peer of `jetdag bench compare`: its workers' tasks module and the runner that measures.

Runs with the celery peer's interpreter (bench/peers/celery/.venv, made by bench/compare.py), never
jetdag's. compare.py starts redis-server and the worker, then this runner, which waits for the worker,
runs a warm-up, measures, and prints one JSON line with its figures:

    celery -A celery_peer worker --pool prefork --concurrency 2     (cwd bench/compare)
    python celery_peer.py WORKLOAD [-n N] [--reps R] [--warmup W]

Broker and result backend are the Redis at $BENCH_REDIS_URL. Results are awaited as a user would:
`ResultSet.join_native` (the Redis backend's pub/sub), each result timestamped as the client reads it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from celery import Celery, chain, chord, group
from celery.result import AsyncResult, ResultSet
from peerkit import arguments, chain_figures, emit, fanout_figures, runs_figures, throughput_figures

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("jetdag_bench", broker=URL, backend=URL)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=3600, worker_hijack_root_logger=False)


@app.task(name="noop")
def noop(*_args: Any) -> None:
    return None


def wait_for_worker(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.control.ping(timeout=0.5):
            return
    raise TimeoutError(f"no Celery worker answered a ping in {timeout:g} s")


def join(results: list[AsyncResult], timeout: float) -> dict[str, float]:
    """Every result read (pub/sub of the Redis backend): when each arrived here."""
    done: dict[str, float] = {}
    ResultSet(results).join_native(timeout=timeout, callback=lambda tid, _v: done.setdefault(tid, time.perf_counter()))
    return done


def burst(n: int, timeout: float) -> tuple[float, list[float]]:
    """n x noop.delay(), then every result: wall seconds and each task's seconds from its send to its result."""
    sent: dict[str, float] = {}
    results = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        r = noop.delay()
        sent[r.id] = t
        results.append(r)
    done = join(results, timeout)
    return max(done.values()) - start, [done[i] - t for i, t in sent.items()]


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    burst(min(500, args.n), args.timeout)
    wall, took = burst(args.n, args.timeout)
    return throughput_figures(args.n, wall, took)


def repeat(args: argparse.Namespace, submit: Any) -> list[float]:
    """Seconds from submit to the final result, for each of --reps runs after --warmup ones, one after the other."""
    took = []
    for i in range(args.warmup + args.reps):
        start = time.perf_counter()
        submit().get(timeout=args.timeout)
        if i >= args.warmup:
            took.append(time.perf_counter() - start)
    return took


def chain_(args: argparse.Namespace) -> dict[str, Any]:
    took = repeat(args, lambda: chain(*(noop.si() for _ in range(args.n))).apply_async())
    return chain_figures(args.n, args.reps, took)


def fanout(args: argparse.Namespace) -> dict[str, Any]:
    took = repeat(args, lambda: chord(group(noop.si() for _ in range(args.n)), noop.si()).apply_async())
    return fanout_figures(args.n, args.reps, took, args.n + 1)


def batch(n: int, timeout: float) -> tuple[float, list[float]]:
    start = time.perf_counter()
    results = [chain(noop.si(), noop.si(), noop.si()).apply_async() for _ in range(n)]
    ends = [t - start for t in join(results, timeout).values()]
    return max(ends), ends


def runs(args: argparse.Namespace) -> dict[str, Any]:
    if args.warmup:
        batch(args.warmup, args.timeout)
    wall, ends = batch(args.n, args.timeout)
    return runs_figures(args.n, wall, ends)


def main() -> int:
    workloads = {"throughput": throughput, "chain": chain_, "fanout": fanout, "runs": runs}
    args = arguments(__doc__, workloads)
    wait_for_worker()
    figures = workloads[args.workload](args)
    return emit(figures, ("celery", "kombu", "redis"), "1 worker, --pool prefork --concurrency 2")


if __name__ == "__main__":
    sys.exit(main())
