"""Plots of the recorded results (results/*.jsonl) as PNGs in plots/, for RESULTS.md.

Needs matplotlib (`make bench-deps`). Each plot shows the first record next to the latest, so a
change in the engine shows as the distance between the two; records without the fields a plot
needs are skipped.

- scale.png: engine CPU per task against DAG size, wide and deep (flat is the target);
- latency.png: a chain step's p50/p90/p99 and the fan-out's seconds, first and latest;
- rates.png: throughput (tasks/s) and runs (runs/s) against issue 7's targets;
- compare.png: jetdag against its peers (results/compare.jsonl), when there is a record.

    jetdag bench plot [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def records(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def first_and_latest(rows: list[dict[str, Any]], *fields: str) -> list[dict[str, Any]]:
    """The first and the latest record that have every one of `fields` (one record if they are the same)."""
    usable = [r for r in rows if all(r.get(f) is not None for f in fields)]
    if not usable:
        return []
    return [usable[0]] if len(usable) == 1 else [usable[0], usable[-1]]


def label(record: dict[str, Any]) -> str:
    return str(record.get("when", "?"))[:16].replace("T", " ")


def plot_scale(plt: Any, out: Path) -> Path | None:
    picked = first_and_latest(records("scale"), "cases")
    if not picked:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for record, style in zip(picked, ("--", "-"), strict=False):
        for shape, color in (("wide", "tab:blue"), ("deep", "tab:orange")):
            cases = sorted(
                (c["tasks"], c["engine_cpu_ms_per_task"])
                for c in record["cases"]
                if c.get("shape") == shape and c.get("engine_cpu_ms_per_task") is not None
            )
            if cases:
                xs, ys = zip(*cases, strict=True)
                ax.plot(xs, ys, style, marker="o", color=color, label=f"{shape}, {label(record)}")
    ax.set_xscale("log")
    ax.set_xlabel("tasks in the DAG")
    ax.set_ylabel("engine CPU per task (ms)")
    ax.set_title("scale: engine CPU per task (flat is the target)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return save(plt, fig, out / "scale.png")


def plot_latency(plt: Any, out: Path) -> Path | None:
    chain = first_and_latest(records("chain"), "step_p50_ms", "step_p90_ms", "step_p99_ms")
    fanout = first_and_latest(records("fanout"), "p50_s")
    if not chain and not fanout:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.6))
    width = 0.38
    for i, record in enumerate(chain):
        values = [record["step_p50_ms"], record["step_p90_ms"], record["step_p99_ms"]]
        left.bar([x + i * width for x in range(3)], values, width, label=label(record))
    left.axhline(2, color="grey", linestyle=":", label="target p50 2 ms")
    left.axhline(10, color="grey", linestyle="--", label="target p99 10 ms")
    left.set_xticks([x + width / 2 for x in range(3)], ["p50", "p90", "p99"])
    left.set_ylabel("ms")
    left.set_title("chain: one step")
    left.legend(fontsize=7)
    for i, record in enumerate(fanout):
        right.bar([i], [record["p50_s"]], 0.6, label=label(record))
    right.axhline(0.3, color="grey", linestyle=":", label="target 0.3 s")
    right.set_xticks(range(len(fanout)), [label(r)[5:] for r in fanout])
    right.set_ylabel("seconds (p50)")
    right.set_title("fan-out 1 → 500 → 1")
    right.legend(fontsize=7)
    return save(plt, fig, out / "latency.png")


def plot_rates(plt: Any, out: Path) -> Path | None:
    panels = [
        ("throughput", "tasks_per_s", 5000, "throughput: tasks/s"),
        ("runs", "runs_per_s", 1500, "runs: 3-task runs/s"),
    ]
    picked = [(name, field, target, title, first_and_latest(records(name), field))
              for name, field, target, title in panels]  # fmt: skip
    if not any(rows for *_, rows in picked):
        return None
    fig, axes = plt.subplots(1, len(picked), figsize=(8.0, 3.6))
    for ax, (_, field, target, title, rows) in zip(axes, picked, strict=True):
        ax.bar(range(len(rows)), [r[field] for r in rows], 0.6)
        ax.axhline(target, color="grey", linestyle=":", label=f"target {target:,}")
        ax.set_xticks(range(len(rows)), [label(r)[5:] for r in rows])
        ax.set_title(title)
        ax.legend(fontsize=7)
    return save(plt, fig, out / "rates.png")


def plot_compare(plt: Any, out: Path) -> Path | None:
    latest: dict[str, dict[str, Any]] = {}
    for record in records("compare"):  # the latest record of each workload
        if record.get("workload") and record.get("systems"):
            latest[record["workload"]] = record
    if not latest:
        return None
    fig, axes = plt.subplots(1, len(latest), figsize=(3.2 * len(latest), 3.6), squeeze=False)
    for ax, record in zip(axes[0], latest.values(), strict=True):
        named = [(s["system"], s["value"]) for s in record["systems"] if isinstance(s.get("value"), int | float)]
        colors = ["tab:green" if n == "jetdag" else "tab:gray" for n, _ in named]
        ax.bar([n for n, _ in named], [v for _, v in named], 0.6, color=colors)
        better = "higher" if record.get("higher_is_better") else "lower"
        unit = record.get("unit") or record.get("figure")
        ax.set_title(f"{record['workload']}: {unit}\n({better} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("jetdag and its peers, same machine, alternating rounds", fontsize=10)
    return save(plt, fig, out / "compare.png")


def save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BENCH / "plots", help="where the PNGs go (default bench/plots)")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: plots need matplotlib: make bench-deps (the `bench` extra)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    made = [p for p in (f(plt, args.out) for f in (plot_scale, plot_latency, plot_rates, plot_compare)) if p]
    for path in made:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
