"""GET /metrics: Prometheus text exposition (format 0.0.4), written by hand.

Every figure is read when scraped, from what already keeps it: the audit log for runs, tasks and task
durations (falling back to the run snapshots in KV `jd_runs` when no auditor answers; the
`jetdag_metrics_source` gauge says which), consumer info for queue depths and lags, `jd_workers` for
workers, and the SSE hub for its clients. A part that cannot be read is left out with a comment
saying why, so one broken source does not blank the whole scrape.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

from litestar import Response, get
from litestar.datastructures import State

from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import AuditError, AuditUnavailable
from jetdag.engine.workers import Offer, served, unserved_reason

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Upper bounds (seconds) of the task duration histogram: from no-op tasks to five-minute batch jobs."""


@dataclass
class Family:
    """One metric family: a name, its type and help, and its samples (labels, value)."""

    name: str
    kind: str  # gauge, counter, histogram
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)
    """(suffix, labels, value): the suffix is `_bucket`/`_sum`/`_count` for a histogram's series, else ''."""

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append(("", labels, value))
        return self


def histogram(name: str, help: str, bounds: Sequence[float], counts: Sequence[int], total: float) -> Family:
    """A histogram family from per-bucket counts (`counts[i]`: observations ≤ bounds[i] and above the
    bound before; one more entry for those above the last bound). Buckets are cumulative on output."""
    if len(counts) != len(bounds) + 1:
        raise ValueError("counts needs one entry per bound plus one for +Inf")
    family = Family(name, "histogram", help)
    running = 0
    for bound, n in zip((*bounds, math.inf), counts, strict=True):
        running += n
        family.samples.append(("_bucket", {"le": _number(bound)}, running))
    family.samples.append(("_sum", {}, total))
    family.samples.append(("_count", {}, running))
    return family


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def render(families: Iterable[Family], comments: Iterable[str] = ()) -> str:
    """The exposition text: `# HELP`, `# TYPE`, then one line per sample; `comments` first, as `# ` lines."""
    lines = [f"# {c}".replace("\n", " ") for c in comments]
    for f in families:
        lines.append(f"# HELP {f.name} {_escape_help(f.help)}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for suffix, labels, value in f.samples:
            label_text = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
            lines.append(f"{f.name}{suffix}{{{label_text}}} {_number(value)}" if label_text
                         else f"{f.name}{suffix} {_number(value)}")  # fmt: skip
    return "\n".join(lines) + "\n"


# --- gathering -------------------------------------------------------------------------------------


async def _states_from_audit(client: Client) -> tuple[Counter[str], Counter[str]]:
    runs = await client.sql("SELECT status, count(*) FROM runs GROUP BY ALL", max_rows=100)
    tasks = await client.sql("SELECT status, count(*) FROM tasks GROUP BY ALL", max_rows=100)
    return (Counter({str(s): int(n) for s, n in runs["rows"]}), Counter({str(s): int(n) for s, n in tasks["rows"]}))


async def _states_from_kv(client: Client) -> tuple[Counter[str], Counter[str]]:
    """Every run snapshot read once: slower than one SQL, but needs only NATS."""
    runs: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    for run_id in await client.runs.ids():
        snapshot, _ = await client.runs.load(run_id)
        if snapshot is None:
            continue
        runs[str(snapshot.get("status"))] += 1
        for task in (snapshot.get("tasks") or {}).values():
            tasks[str(task.get("status"))] += 1
    return runs, tasks


async def _durations(client: Client) -> Family:
    """One SQL: per bucket, the finished attempts whose run time falls in it (run_ms is started→finished)."""
    edges = [0.0, *BUCKETS]
    columns = [f"count(*) FILTER (WHERE s > {lo!r} AND s <= {hi!r})" for lo, hi in itertools.pairwise(edges)]
    columns[0] = f"count(*) FILTER (WHERE s <= {BUCKETS[0]!r})"
    sql = (f"SELECT {', '.join(columns)}, count(*) FILTER (WHERE s > {BUCKETS[-1]!r}), coalesce(sum(s), 0) "
           "FROM (SELECT run_ms / 1000.0 AS s FROM attempts WHERE run_ms IS NOT NULL)")  # fmt: skip
    (row,) = (await client.sql(sql, max_rows=1))["rows"]
    return histogram(
        "jetdag_task_duration_seconds",
        "Run time of finished task attempts (started to finished), from the audit log.",
        BUCKETS,
        [int(n) for n in row[:-1]],
        float(row[-1]),
    )


async def _consumers(client: Client, serving: list[Offer] | None) -> list[Family]:
    depth = Family("jetdag_queue_depth", "gauge", "Tasks waiting in JD_TASKS per queue (all priorities and handlers).")
    unserved = Family(
        "jetdag_tasks_unserved",
        "gauge",
        "Tasks waiting for a handler of a queue that no live worker has (alert on it with a `for:` of a minute).",
    )
    lag = Family(
        "jetdag_consumer_lag",
        "gauge",
        "Messages of JD_EVENTS not yet delivered to the partition and auditor consumers (num_pending).",
    )
    waiting: Counter[tuple[str, str, str]] = Counter()
    consumed: set[str] = set()
    for info in await client.js.consumers_info(S.TASKS):
        subject = (info.config.filter_subject if info.config else None) or ""
        if (route := S.task_route(subject)) is not None:
            waiting[route[0], route[2], route[3]] += info.num_pending or 0
            consumed.add(subject)
    # A handler no worker ever had has no consumer: its tasks are counted on their subjects.
    stream = await client.js.stream_info(S.TASKS, subjects_filter="jd.task.>")
    for subject, n in (stream.state.subjects or {}).items():
        if subject not in consumed and (route := S.task_route(subject)) is not None:
            waiting[route[0], route[2], route[3]] += n
    per_queue: Counter[str] = Counter()
    for (queue, handler, requires), n in sorted(waiting.items()):
        per_queue[queue] += n
        if n and serving is not None and unserved_reason(queue, handler, S.token_labels(requires), serving):
            unserved.add(n, queue=queue, handler=handler, **({"requires": requires} if requires else {}))
    for queue, n in sorted(per_queue.items()):
        depth.add(n, queue=queue)
    for info in await client.js.consumers_info(S.EVENTS):
        if info.name == S.AUDITOR_CONSUMER or info.name.startswith("jd_part_"):
            lag.add(info.num_pending or 0, consumer=info.name)
    lag.samples.sort(key=lambda s: s[1]["consumer"])
    return [depth, *([unserved] if serving is not None else []), lag]


def _sse_clients(state: State) -> int:
    hub: Any = getattr(state, "hub", None)
    clients = getattr(hub, "clients", 0) if hub is not None else 0
    if callable(clients):
        clients = clients()
    return len(clients) if isinstance(clients, Sized) and not isinstance(clients, str) else int(clients or 0)


async def gather(client: Client, state: State) -> tuple[list[Family], list[str]]:
    """Every family, and a comment for each part that could not be read."""
    families: list[Family] = []
    notes: list[str] = []
    runs: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    try:
        runs, tasks = await _states_from_audit(client)
        source = "audit"
    except (AuditError, AuditUnavailable) as exc:
        notes.append(f"runs and tasks from KV jd_runs: the audit log did not answer ({exc})")
        source = "kv"
        try:
            runs, tasks = await _states_from_kv(client)
        except Exception as kv_exc:
            notes.append(f"jetdag_runs and jetdag_tasks empty: {type(kv_exc).__name__}: {kv_exc}")
    families.append(
        Family("jetdag_metrics_source", "gauge", "Where jetdag_runs and jetdag_tasks come from: audit or kv.").add(
            1, source=source
        )
    )
    run_family = Family("jetdag_runs", "gauge", "Runs by state.")
    for status, n in sorted(runs.items()):
        run_family.add(n, state=status)
    task_family = Family("jetdag_tasks", "gauge", "Tasks by state.")
    for status, n in sorted(tasks.items()):
        task_family.add(n, state=status)
    families += [run_family, task_family]
    if source == "audit":
        try:
            families.append(await _durations(client))
        except (AuditError, AuditUnavailable) as exc:
            notes.append(f"jetdag_task_duration_seconds left out: {exc}")
    else:
        notes.append("jetdag_task_duration_seconds left out: it needs the audit log")
    serving: list[Offer] | None = None
    try:
        workers = await client.workers()
        serving = served(workers)
        by_state = Counter(str(w["state"]) for w in workers)
        worker_family = Family("jetdag_workers", "gauge", "Workers by heartbeat: alive or presumed dead.")
        for status in ("alive", "presumed dead"):
            worker_family.add(by_state.get(status, 0), state=status)
        families.append(worker_family)
    except Exception as exc:
        notes.append(f"jetdag_workers and jetdag_tasks_unserved left out: {type(exc).__name__}: {exc}")
    try:
        families += await _consumers(client, serving)
    except Exception as exc:  # JetStream not answering: report the rest
        notes.append(f"jetdag_queue_depth and jetdag_consumer_lag left out: {type(exc).__name__}: {exc}")
    sse = Family("jetdag_sse_clients", "gauge", "Dashboard clients on the live stream (SSE).")
    families.append(sse.add(_sse_clients(state)))
    return families, notes


@get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response[str]:
    """Prometheus metrics (text format 0.0.4)."""
    client: Client = state.client
    families, notes = await gather(client, state)
    return Response(render(families, notes), media_type=CONTENT_TYPE)
