"""File storm: N files dropped into a watched tree within seconds start N runs, each once.

nats-server, `jetdag engine` and `--workers` x `jetdag worker` as separate processes. One workflow watches
`<dir>/*/*.csv` (one no-op task, `{meta:file}` in its payload). The benchmark writes `-n` files into
`--dirs` subdirectories as fast as it can, then waits until every file has started a run: the runs are
counted from the submissions the engine publishes (`jd.evt.<p>.<run>`, a core subscription), by the
file they name, and again from JD_EVENTS afterwards. Reported: how long the writing took, the time from
the last file written to the last run submitted and to the last run finished, runs per second over the
storm, and files that started no run or more than one.

The engine takes a file once its size and mtime have held still for its settle time (1 s, `jetdag
engine` default), so the last run cannot start sooner than that after the last write.

    jetdag bench filestorm [-n 10000] [--dirs 100]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import harness
import msgpack
from harness import Stack, until

from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, Trigger, WorkflowSpec


class Submissions:
    def __init__(self) -> None:
        self.runs: dict[str, set[str]] = defaultdict(set)
        """file -> the run ids started for it."""
        self.last = 0.0
        self.finished: set[str] = set()
        self.last_finished = 0.0

    async def on_msg(self, msg: Any) -> None:
        body = msgpack.unpackb(msg.data)
        if body.get("k") == "run.submitted" and body.get("workflow") == "bench_storm":
            self.runs[body["meta"]["file"]].add(body["run"])
            self.last = time.time()

    async def on_step(self, msg: Any) -> None:
        step = msgpack.unpackb(msg.data)
        if step["status"] in harness.RUN_DONE and step["run"] not in self.finished:
            self.finished.add(step["run"])
            self.last_finished = time.time()


def write_files(root: Path, n: int, dirs: int) -> float:
    """n small CSV files spread over `dirs` directories; the time the last one was closed."""
    for d in range(dirs):
        (root / f"d{d:03}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"d{i % dirs:03}" / f"f{i:06}.csv").write_bytes(b"a,b\n1,2\n")
    return time.time()


async def main(args: Any) -> dict[str, Any]:
    async with Stack() as s:
        root = s.dir / "storm"
        root.mkdir()
        s.engine()
        s.workers(args.workers, args.concurrency)
        await s.wait_ready(args.workers)
        spec = WorkflowSpec(
            "bench_storm",
            (TaskSpec("take", "noop", payload={"file": "{meta:file}"}),),
            triggers=(Trigger(files=(f"{root}/*/*.csv",)),),
        )
        seen = Submissions()
        await s.nc.subscribe("jd.evt.*.*", cb=seen.on_msg)
        await s.nc.subscribe("jd.evt.*.*.step", cb=seen.on_step)
        await s.nc.flush()
        async with await Client.connect(s.url) as client:
            await client.apply(spec)
            await until(lambda: _watching(client), 30, "the engine did not take up the file trigger")
            began = time.time()
            written = await asyncio.to_thread(write_files, root, args.n, args.dirs)
            files = {str(p) for p in root.glob("*/*.csv")}
            await until(lambda: _all(seen, args.n), args.timeout, f"not every file started a run in {args.timeout} s")
            await until(lambda: _done(seen, args.n), args.timeout, f"not every run finished in {args.timeout} s")
            s.check_alive()
    counts = [len(seen.runs.get(f, ())) for f in files]
    return harness.record(
        "filestorm", n=args.n, dirs=args.dirs, write_s=round(written - began, 2),
        last_run_after_last_write_s=round(seen.last - written, 2),
        all_finished_after_last_write_s=round(seen.last_finished - written, 2),
        runs_per_s=round(args.n / max(seen.last - began, 1e-9), 1),
        missed=sum(1 for c in counts if c == 0), doubled=sum(1 for c in counts if c > 1),
    )  # fmt: skip


async def _watching(client: Client) -> bool:
    return (await client.schedules.get("bench_storm")).trigger("files").since is not None


async def _all(seen: Submissions, n: int) -> bool:
    return len(seen.runs) >= n


async def _done(seen: Submissions, n: int) -> bool:
    return len(seen.finished) >= n


def cli() -> None:
    p = harness.parser(__doc__, "filestorm")
    p.add_argument("-n", type=int, default=10_000, help="files dropped (default 10000)")
    p.add_argument("--dirs", type=int, default=100, help="directories they are spread over (default 100)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the runs (default 300)")
    harness.add_workers(p)
    args = p.parse_args()
    rec = harness.run(main(args))
    rows = [
        ("files written in", f"{rec['write_s']} s"),
        ("last run started after the last write", f"{rec['last_run_after_last_write_s']} s"),
        ("every run finished after the last write", f"{rec['all_finished_after_last_write_s']} s"),
        ("runs started per second over the storm", rec["runs_per_s"]),
        ("files that started no run", rec["missed"]),
        ("files that started more than one", rec["doubled"]),
    ]
    harness.finish(args, rec, f"file storm: {args.n:,} files in {args.dirs} directories", ("", "value"), rows)
    if rec["missed"] or rec["doubled"]:
        sys.exit(1)


if __name__ == "__main__":
    cli()
