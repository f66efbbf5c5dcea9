"""The tasks page over a big audit log: p50/p95 of one page (store query + template) at several depths.

The log is filled through `AuditStore.ingest` with messages written as the engine and workers write them
(msgpack `run.submitted`, step records, `task.started`/`task.succeeded`/`task.failed`): runs of a
10-task chain over 4 workflows and 8 workers, one attempt in 20 failing and retried. Then `/tasks` is
rendered as the page handler does it (AuditStore.tasks, then Jinja on web/templates/tasks.html) for the
first page, a filtered first page, and keyset pages deep in the log (cursors taken at 50 % and 95 %).

    jetdag bench tasks-page [--tasks 1000000] [--samples 50] [--db PATH] [--json]

With `--db` the filled log is kept at PATH and a later run reuses it instead of filling it again (the
fill takes minutes); a file of an older schema is migrated on open, as the auditor would.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import harness
import jinja2
from harness import audit_batches, percentile

from jetdag.engine.audit import schema
from jetdag.engine.audit.store import AuditStore, encode_cursor
from jetdag.engine.events import RunSubmitted, TaskFailed, TaskStarted, TaskSucceeded, Transition
from jetdag.engine.messages import encode_event, encode_step

TEMPLATES = Path(__file__).parent.parent / "web" / "templates"
TASKS_PER_RUN = 10
WORKFLOWS = ("etl_daily", "reports", "ingest", "cleanup")
PAGE = 50


def run_events(r: int, t0: float) -> Iterator[tuple[str, bytes]]:
    run = f"R{r:09d}"
    subject = f"jd.evt.{r % 16}.{run}"
    yield subject, encode_event(RunSubmitted(run, WORKFLOWS[r % len(WORKFLOWS)], 1, {"n": r}, t0))
    yield f"{subject}.step", encode_step(run, 1, "running", [Transition(None, 0, "running", t0),
                                                             Transition("t0", 1, "queued", t0)])  # fmt: skip
    t, seq = t0, 1
    for i in range(TASKS_PER_RUN):
        worker = f"w{(r + i) % 8}"
        attempt = 1
        if (r * TASKS_PER_RUN + i) % 20 == 0:  # one attempt in 20 fails and is retried
            yield subject, encode_event(TaskStarted(run, f"t{i}", 1, t + 0.001, worker))
            yield subject, encode_event(TaskFailed(run, f"t{i}", 1, t + 0.02, "ValueError: flaky", worker, True))
            seq += 1
            yield f"{subject}.step", encode_step(run, seq, "running", [
                Transition(f"t{i}", 1, "running", t + 0.001), Transition(f"t{i}", 1, "retrying", t + 0.02,
                                                                         "ValueError: flaky"),
                Transition(f"t{i}", 2, "queued", t + 0.03)])  # fmt: skip
            t, attempt = t + 0.03, 2
        yield subject, encode_event(TaskStarted(run, f"t{i}", attempt, t + 0.001, worker))
        yield subject, encode_event(TaskSucceeded(run, f"t{i}", attempt, t + 0.01 + (i % 5) * 0.01, worker, {}))
        seq += 1
        done = t + 0.01 + (i % 5) * 0.01
        transitions = [
            Transition(f"t{i}", attempt, "running", t + 0.001),
            Transition(f"t{i}", attempt, "succeeded", done),
        ]
        transitions.append(Transition(f"t{i + 1}", 1, "queued", done) if i + 1 < TASKS_PER_RUN
                           else Transition(None, 0, "succeeded", done))  # fmt: skip
        yield f"{subject}.step", encode_step(run, seq, "running", transitions)
        t = done


def main(args: argparse.Namespace) -> dict[str, Any]:
    runs = max(1, args.tasks // TASKS_PER_RUN)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    template = env.get_template("tasks.html")
    request = SimpleNamespace(url=SimpleNamespace(path="/tasks"))
    with tempfile.TemporaryDirectory() as tmp:
        path: Path = args.db or Path(tmp) / "audit.duckdb"
        reused = path.exists()
        started = time.perf_counter()
        store = AuditStore(path).open()
        open_s = time.perf_counter() - started
        events, fill_s = 0, None
        if reused:
            events, rows = store.counts()["events"], store.counts()["tasks"]
            print(f"  reusing {path}: {rows:,} task rows, opened (and migrated if older) in {open_s:.1f} s")
        else:
            t0 = time.time() - runs * 0.1
            progress = time.monotonic()
            for batch in audit_batches(runs, 10_000, t0, run_events, 0.1):
                events += store.ingest(batch)
                if time.monotonic() - progress > 15:
                    progress = time.monotonic()
                    print(f"  {events:>12,} events stored", flush=True)
            fill_s = round(time.perf_counter() - started, 1)
            rows = store.counts()["tasks"]

        def key_at(fraction: float) -> tuple[int, str, str]:
            # Setup only: the cursor a reader paging from the top would hold at this depth.
            found = store.con.execute(
                "SELECT epoch_us(coalesce(finished_at, started_at, first_queued_at)) AS k, run_id, task FROM tasks "
                "ORDER BY k DESC, run_id DESC, task DESC LIMIT 1 OFFSET ?",
                [int(rows * fraction)],
            ).fetchone()
            assert found is not None
            return int(found[0]), str(found[1]), str(found[2])

        # The hour before the newest task, not before now: a reused file was filled some time ago.
        found = store.con.execute("SELECT epoch(max(coalesce(finished_at, started_at))) FROM tasks").fetchone()
        assert found is not None
        newest = float(found[0])
        cases: dict[str, dict[str, Any]] = {
            "first page": {},
            "first page, workflow + status": {"workflow": "reports", "status": "succeeded"},
            "first page, worker + since 1 h": {"worker": "w3", "since": newest - 3600},
            "keyset page at 50 %": {"cursor": key_at(0.5)},
            "keyset page at 95 %": {"cursor": key_at(0.95)},
            "keyset at 95 %, workflow": {"cursor": key_at(0.95), "workflow": "ingest"},
        }
        results: dict[str, dict[str, float]] = {}
        for name, filters in cases.items():
            latencies = []
            for _ in range(args.samples):
                began = time.perf_counter()
                page = store.tasks(**filters, limit=PAGE)
                html = template.render(request=request, tasks=page["tasks"], next_url=page["next"], error=None,
                                       form={}, statuses=(), first_page=True, first_url="/tasks")  # fmt: skip
                latencies.append(time.perf_counter() - began)
            assert len(page["tasks"]) == PAGE and "<tr>" in html, name
            results[name] = {"p50_ms": round(statistics.median(latencies) * 1000, 2),
                             "p95_ms": round(percentile(latencies, 95) * 1000, 2)}  # fmt: skip
        size_mb = path.stat().st_size / 2**20
        store.close()
    assert encode_cursor  # the cursor format the API gives out is the one measured here
    return harness.record(
        "tasks_page",
        schema=schema.VERSION,
        tasks=rows,
        events=events,
        page=PAGE,
        samples=args.samples,
        fill_s=fill_s,
        reused=reused,
        open_s=round(open_s, 2),
        file_mb=round(size_mb),
        cases=results,
    )


if __name__ == "__main__":
    parser = harness.parser(__doc__, "tasks_page")
    parser.add_argument("--tasks", type=int, default=1_000_000, help="task rows in the log (default 1,000,000)")
    parser.add_argument("--samples", type=int, default=50, help="renders timed per case")
    parser.add_argument("--db", type=Path, help="keep the log here; reuse it if it exists (no fill)")
    args = parser.parse_args()
    rec = main(args)
    filled = "reused" if rec["reused"] else f"filled in {rec['fill_s']} s"
    title = (
        f"tasks page: {rec['tasks']:,} task rows ({rec['events']:,} events, {filled}, file {rec['file_mb']} MB), "
        f"{PAGE} rows a page, {args.samples} renders each"
    )
    rows = [[name, r["p50_ms"], r["p95_ms"]] for name, r in rec["cases"].items()]
    harness.finish(args, rec, title, ["case", "p50 ms", "p95 ms"], rows)
