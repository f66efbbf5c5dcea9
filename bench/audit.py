"""Audit log: how fast events go into DuckDB, and how fast a run summary comes out of a big log.

Synthetic but faithful: each run is a 5-task chain written exactly as the engine and workers write
it (msgpack `run.submitted`, step records, `task.started`/`task.succeeded`), 17 events per run. They
go through `AuditStore.ingest` in batches of the auditor's size, so the figure is the store's rate;
NATS delivery in front of it is measured by the throughput benchmark. Then the summary the CLI and
API serve (`run_timings` + `summarize`) is timed for random runs of the full log.

    jetdag bench audit [--events 10000000] [--batch 10000] [--samples 200] [--json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
from harness import audit_batches, percentile

from jetdag.engine.audit.store import AuditStore
from jetdag.engine.audit.summary import summarize
from jetdag.engine.events import RunSubmitted, TaskStarted, TaskSucceeded, Transition
from jetdag.engine.messages import encode_event, encode_step

TASKS = 5
PER_RUN = 2 + 3 * TASKS


def run_events(run: str, t0: float) -> Iterator[tuple[str, bytes]]:
    subject = f"jd.evt.{hash(run) % 16}.{run}"
    yield subject, encode_event(RunSubmitted(run, "bench_chain", 1, {"day": "2026-01-01"}, t0))
    yield f"{subject}.step", encode_step(run, 1, "running", [Transition(None, 0, "running", t0),
                                                             Transition("t0", 1, "queued", t0)])  # fmt: skip
    t, seq = t0, 1
    for i in range(TASKS):
        yield subject, encode_event(TaskStarted(run, f"t{i}", 1, t + 0.001, "w1"))
        yield subject, encode_event(TaskSucceeded(run, f"t{i}", 1, t + 0.01, "w1", {"exit_code": 0}))
        seq += 1
        transitions = [Transition(f"t{i}", 1, "running", t + 0.001), Transition(f"t{i}", 1, "succeeded", t + 0.01)]
        if i + 1 < TASKS:
            transitions.append(Transition(f"t{i + 1}", 1, "queued", t + 0.01))
        else:
            transitions.append(Transition(None, 0, "succeeded", t + 0.01))
        yield f"{subject}.step", encode_step(run, seq, "running", transitions)
        t += 0.01


def main(args: argparse.Namespace) -> dict[str, Any]:
    runs = max(1, args.events // PER_RUN)
    with tempfile.TemporaryDirectory() as tmp:
        store = AuditStore(Path(tmp) / "audit.duckdb").open()
        t0 = time.time() - runs * 0.05
        ingest_s, events, progress = 0.0, 0, time.monotonic()
        for batch in audit_batches(runs, args.batch, t0, lambda r, ts: run_events(f"R{r:09d}", ts), 0.05):
            started = time.perf_counter()
            events += store.ingest(batch)
            ingest_s += time.perf_counter() - started
            if time.monotonic() - progress > 10:
                progress = time.monotonic()
                print(f"  {events:>12,} events, {events / ingest_s:,.0f}/s so far", flush=True)
        size_mb = (Path(tmp) / "audit.duckdb").stat().st_size / 2**20
        parents = {f"t{i}": (f"t{i - 1}",) if i else () for i in range(TASKS)}
        latencies = []
        for r in random.Random(1).sample(range(runs), min(args.samples, runs)):
            started = time.perf_counter()
            found = store.run_timings(f"R{r:09d}")
            assert found is not None
            run, statuses, attempts = found
            summary = summarize(
                f"R{r:09d}", run["status"], run["started_at"], run["finished_at"], parents, statuses, attempts
            )
            latencies.append(time.perf_counter() - started)
            assert summary.critical_path == tuple(parents), summary.critical_path
        counts = store.counts()
        store.close()
    return harness.record(
        "audit",
        events=events,
        runs=runs,
        batch=args.batch,
        ingest_events_per_s=round(events / ingest_s),
        ingest_s=round(ingest_s, 1),
        file_mb=round(size_mb),
        rows=counts,
        summary_p50_ms=round(statistics.median(latencies) * 1000, 2),
        summary_p99_ms=round(percentile(latencies, 99) * 1000, 2),
    )


if __name__ == "__main__":
    parser = harness.parser(__doc__, "audit")
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the log (default 10,000,000)")
    parser.add_argument("--batch", type=int, default=10_000, help="events per transaction (the auditor's most)")
    parser.add_argument("--samples", type=int, default=200, help="summaries to time")
    args = parser.parse_args()
    rec = main(args)
    title = f"audit: {rec['events']:,} events ({rec['runs']:,} runs of a {TASKS}-task chain), batches of {args.batch}"
    columns = ["ingest events/s", "ingest s", "file MB", "summary p50 ms", "summary p99 ms"]
    row = [rec["ingest_events_per_s"], rec["ingest_s"], rec["file_mb"], rec["summary_p50_ms"], rec["summary_p99_ms"]]
    harness.finish(args, rec, title, columns, [row])
