"""What every peer script shares: its command line, percentiles, the figures' shapes, and the JSON line it prints.

The peer scripts run with their peer's own interpreter (bench/peers/<peer>/.venv), where jetdag is not
installed; they import this module from their own directory.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
from collections.abc import Iterable
from typing import Any


def arguments(doc: str | None, workloads: Iterable[str], *, timeout: bool = True) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=list(workloads))
    p.add_argument("-n", type=int, required=True, help="tasks, steps, width or runs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    if timeout:
        p.add_argument("--timeout", type=float, default=600)
    return p.parse_args()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def throughput_figures(n: int, wall: float, took: list[float]) -> dict[str, Any]:
    """A burst's figures: its wall seconds and each task's seconds from its send to its result."""
    return {"tasks": n, "tasks_per_s": round(n / wall, 1), "p50_ms": round(percentile(took, 50) * 1000, 1),
            "p99_ms": round(percentile(took, 99) * 1000, 1), "wall_s": round(wall, 3)}  # fmt: skip


def runs_figures(n: int, wall: float, ends: list[float]) -> dict[str, Any]:
    """N runs of a 3-task chain at once: their wall seconds and each run's seconds to its end."""
    return {"runs": n, "runs_per_s": round(n / wall, 1), "tasks_per_s": round(3 * n / wall, 1),
            "p50_ms": round(percentile(ends, 50) * 1000, 1), "p99_ms": round(percentile(ends, 99) * 1000, 1),
            "wall_s": round(wall, 3)}  # fmt: skip


def chain_figures(steps: int, reps: int, took: list[float]) -> dict[str, Any]:
    """A chain's figures from its runs' seconds: per step is the run's time over its steps (no peer shows steps)."""
    p50 = statistics.median(took)
    return {"steps": steps, "runs": reps, "run_p50_s": round(p50, 3), "step_ms": round(p50 * 1000 / steps, 2)}


def fanout_figures(width: int, reps: int, took: list[float], tasks: int) -> dict[str, Any]:
    """A fan-out's figures from its runs' seconds; `tasks` counts what the peer runs besides the width."""
    p50 = statistics.median(took)
    return {"width": width, "reps": reps, "p50_s": round(p50, 3), "min_s": round(min(took), 3),
            "max_s": round(max(took), 3), "tasks_per_s": round(tasks / p50, 1)}  # fmt: skip


def emit(figures: dict[str, Any], packages: Iterable[str], setup: str) -> int:
    """Print the one JSON line bench/compare.py reads: the figures, the peer's versions, how it was set up."""
    versions = {name: importlib.metadata.version(name) for name in packages}
    print(json.dumps({**figures, "versions": versions, "setup": setup}))
    return 0
