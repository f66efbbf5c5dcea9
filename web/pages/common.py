"""What the dashboard's pages share: rendering fragments for SSE, formatting, a run's DAG and task rows."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import orjson
from litestar import Request
from markupsafe import Markup

from jetdag.engine.client import Client
from jetdag.engine.errors import NotFound
from jetdag.engine.model import WorkflowSpec
from jetdag.engine.run import why_not
from jetdag.engine.state import RunStatus, TaskStatus
from jetdag.engine.views import run_view
from jetdag.web import dag

RUN_STATES = [s.value for s in RunStatus]
TAIL = 400  # characters of a task's output shown in the table; the full result is in the API


def render(request: Request[Any, Any, Any], template: str, context: dict[str, Any]) -> str:
    """A template rendered to text, for SSE messages (a Template response cannot be sent as an event)."""
    engine = request.app.template_engine
    assert engine is not None  # create_app always configures one
    return str(engine.get_template(template).render(**context))


def when(ts: float | None) -> str:
    """An epoch time as `YYYY-MM-DD HH:MM:SS` UTC (the pages show UTC like the CLI), or empty."""
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: float | None, end: float | None, now: float | None = None) -> str:
    """`850ms`, `12.3s`, `4m 05s`, `2h 10m`; a running span counts up to now; empty without a start."""
    if not start:
        return ""
    secs = max(0.0, (end or now or time.time()) - start)
    if secs < 1:
        return f"{secs * 1000:.0f}ms"
    if secs < 60:
        return f"{secs:.1f}s"
    if secs < 3600:
        return f"{int(secs // 60)}m {int(secs % 60):02d}s"
    return f"{int(secs // 3600)}h {int(secs % 3600 // 60):02d}m"


def tail(result: Any) -> str:
    """The end of a task's output: a command's stdout (or stderr), else the result as JSON."""
    if result is None:
        return ""
    if isinstance(result, dict) and isinstance(result.get("stdout"), str):
        text = result["stdout"] or str(result.get("stderr") or "")
    else:
        text = orjson.dumps(result, default=str).decode()
    return text if len(text) <= TAIL else "…" + text[-TAIL:]


def deps(spec: WorkflowSpec) -> dict[str, tuple[str, ...]]:
    return {t.name: t.depends_on for t in spec.tasks}


def triggers(spec: WorkflowSpec) -> str:
    """What starts the workflow besides a person, on one line: `cron 0 2 * * * (Europe/Paris); files in/*.csv`."""
    parts: list[str] = []
    for t in spec.triggers:
        if t.cron:
            parts.append(f"cron {t.cron}" + (f" ({t.timezone})" if t.timezone else ""))
        if t.files:
            parts.append("files " + ", ".join(t.files))
        if t.subject:
            parts.append(f"message {t.subject}")
        if t.batch is not None:
            parts.append("batch")
    return "; ".join(dict.fromkeys(parts)) or "manual"


async def workflow_names(client: Client) -> list[str]:
    return await client.defs.names()


async def load_run(client: Client, run_id: str) -> tuple[dict[str, Any] | None, WorkflowSpec | None]:
    """The run's view and the spec it runs (its own version, or the spec carried inline by an enqueued task)."""
    snapshot, _ = await client.runs.load(run_id)
    if snapshot is None:
        return None, None
    view = run_view(snapshot)
    spec: WorkflowSpec | None = None
    if "spec" in snapshot:
        spec = WorkflowSpec.from_dict(snapshot["spec"])
    else:
        try:
            spec, _ = await client.defs.get(view["workflow"], revision=view["version"] or None)
        except NotFound:
            spec = None
    if spec is not None:
        await client.say_unserved(view, spec)
    return view, spec


def _figure(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}".rstrip("0")


def progress_view(p: dict[str, Any] | None) -> dict[str, Any] | None:
    """A task's latest progress (Hub.progress_of) as shown: `pct` for a bar (None without a total), `figures`
    like `3/10 (30%)`, and the handler's message; None for no progress."""
    if not p:
        return None
    done, total = p.get("done"), p.get("total")
    pct = None
    figures = ""
    if done is not None and total:
        pct = max(0.0, min(100.0, done * 100 / total))
        figures = f"{_figure(done)}/{_figure(total)} ({pct:.0f}%)"
    elif done is not None:
        figures = _figure(done)
    if pct is None and not figures and not p.get("message"):
        return None
    return {"pct": None if pct is None else round(pct, 1), "figures": figures, "message": p.get("message") or ""}


def run_context(
    run_id: str,
    view: dict[str, Any] | None,
    spec: WorkflowSpec | None,
    progress: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything _run_live.html shows: the run, its DAG coloured by task state, and one row per task (with
    the latest `progress` of its running attempt, from Hub.progress_of)."""
    if view is None:
        return {"run_id": run_id, "run": None, "svg": "", "rows": []}
    tasks: dict[str, dict[str, Any]] = view["tasks"]
    progress = progress or {}
    # Without its spec (an unknown version) the run is still drawn: its tasks, unconnected.
    graph = deps(spec) if spec is not None else {name: () for name in tasks}
    statuses = {name: t["status"] for name, t in tasks.items()}
    svg = Markup(dag.svg(dag.layout(graph), statuses, href="#t-{task}"))  # dag.svg escapes every name
    now = time.time()
    failed_run = view["status"] == RunStatus.FAILED
    rows = []
    for name in graph:
        t = tasks.get(name, {"status": TaskStatus.WAITING.value, "attempts": 0})
        p = progress.get(name)
        current = t["status"] == TaskStatus.RUNNING and p is not None and p["attempt"] == t["attempts"]
        # The engine's own rule, so the button shows exactly when the engine would take it (not on a
        # cancelled or timed-out run); on a failed run ignoring its failed task resumes the run.
        ignorable = name in statuses and why_not("ignore", view["status"], statuses, name) is None
        rows.append(
            {
                "name": name,
                "status": t["status"],
                "attempts": t["attempts"],
                "duration": duration(t.get("started_at"), t.get("finished_at"), now),
                "worker": t.get("worker") or "",
                "error": t.get("error") or "",
                "waiting": t.get("waiting") or "",
                "tail": tail(t.get("result")),
                "progress": progress_view(p) if current else None,
                "ignore": ("resume" if failed_run else "ignore") if ignorable else None,
            }
        )
    run = {
        **view,
        "created": when(view.get("created_at")),
        "duration": duration(view.get("started_at") or view.get("created_at"), view.get("finished_at"), now),
        "done": view["status"] in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED),
        "params_json": orjson.dumps(view.get("params") or {}).decode(),
    }
    return {"run_id": run_id, "run": run, "svg": svg, "rows": rows}


def run_row(view: dict[str, Any]) -> dict[str, Any]:
    """A run in a list: its view plus display strings."""
    return {
        **view,
        "created": when(view.get("created_at")),
        "duration": duration(view.get("started_at") or view.get("created_at"), view.get("finished_at")),
    }


def sparkline(values: list[float], width: int = 240, height: int = 40) -> Markup:
    """Inline SVG of `values` (oldest first) as a line over a filled area, scaled to the largest value."""
    top = max(values, default=0.0) or 1.0
    n = max(1, len(values) - 1)
    pts = " ".join(f"{i * width / n:.1f},{height - 2 - v / top * (height - 4):.1f}" for i, v in enumerate(values))
    return Markup(  # numbers only
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'preserveAspectRatio="none" role="img" '
        f'aria-label="step records per second"><polyline class="area" points="0,{height} {pts} {width},{height}"/>'
        f'<polyline class="line" points="{pts}"/></svg>'
    )
