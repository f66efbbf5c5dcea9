"""The `jetdag` command: one function per verb. Exit codes: 0 ok, 1 failed, 2 bad input or usage.

This is the composition root: the one module of `engine` that may import `actors` and `web`.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import getpass
import io
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from jetdag.engine import subjects as S
from jetdag.engine.config import CONFIG_FILE, env_var, load_defaults
from jetdag.engine.errors import ConfigError, JetdagError, RunWaitTimeout
from jetdag.engine.home import find_nats
from jetdag.engine.workers import HEARTBEAT, MIN_INTERVAL

if TYPE_CHECKING:  # each command imports what it needs when it runs; only mypy needs this here
    from jetdag.engine.definitions import Validated

log = logging.getLogger("jetdag")


def opt(*names: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option that also reads JETDAG_<NAME> from the environment."""
    long = next(n for n in names if n.startswith("--"))
    return click.option(*names, envvar=env_var(long), show_envvar=True, **kwargs)


nats_opt = opt("--nats", help="NATS URL; default: the one `jetdag up` wrote into the data dir.")
replicas_opt = opt(
    "--replicas", default=1, show_default=True, type=click.IntRange(1, 5),
    help="Copies of each stream and KV bucket (3 on a 3-node cluster; see deploy/nats/).",
)  # fmt: skip
data_opt = opt("--data", default=".jetdag", show_default=True, type=click.Path(path_type=Path), help="Data dir.")
json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def run_async(coro: Coroutine[Any, Any, int]) -> None:
    """Run `coro` and exit with its code; jetdag errors print their message and exit 2."""
    try:
        code = asyncio.run(coro)
    except RunWaitTimeout as exc:  # the run goes on; only the wait ended
        click.echo(f"error: {exc}", err=True)
        code = 1
    except BrokenPipeError:
        # The reader left (`jetdag runs | head`): stop quietly, as Unix tools do, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    except (JetdagError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        code = 2
    except TimeoutError:
        click.echo("error: timed out", err=True)
        code = 1
    sys.exit(code)


def print_json(obj: Any) -> None:
    click.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def print_result(result: dict[str, Any], fmt: str) -> None:
    """A query result as an aligned table, CSV or JSON (`{"columns", "rows", …}`)."""
    columns, rows = result["columns"], result["rows"]
    if fmt == "json":
        print_json(result)
        return

    def cell(v: Any) -> str:
        if v is None:
            return "" if fmt == "csv" else "NULL"
        return v if isinstance(v, str) else orjson.dumps(v).decode()

    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([cell(v) for v in row] for row in rows)
        click.echo(out.getvalue(), nl=False)
        return
    text = [[cell(v).replace("\n", " ") for v in row] for row in rows]
    widths = [min(60, max([len(c), *(len(r[i]) for r in text)])) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in text:
        click.echo("  ".join(v[:w].ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    more = " (more rows exist: raise --max-rows)" if result.get("truncated") else ""
    click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{more})")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@opt("--log-level", default="warning", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
def main(log_level: str) -> None:
    """jetdag: workflows of tasks on NATS JetStream. Start with `jetdag up`."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- running the system ---------------------------------------------------------------------------


@main.command()
@opt("--http", default="127.0.0.1:8080", show_default=True, help="Where the dashboard and API listen.")
@data_opt
@opt("--workflows", type=click.Path(path_type=Path, file_okay=False), help="Apply every definition in this dir.")
@opt("--nats", help="Use this NATS instead of starting an embedded one.")
@replicas_opt
@opt("--no-examples", is_flag=True, help="Do not load the example workflows.")
@opt("--queue", "queues", multiple=True, default=["default"], show_default=True, help="Queues the worker serves.")
@opt("--import", "imports", multiple=True, help="Module(s) whose @handler functions the worker runs.")
@opt("--concurrency", default=32, show_default=True, help="Tasks the worker runs at once.")
@opt("--durability", type=click.Choice(["fast", "strict"]), default="fast", show_default=True,
     help="strict: fsync every write (sync_interval always); fast: the server default.")  # fmt: skip
@opt("--retention-days", default=90.0, show_default=True, help="Audit log: forget finished runs older than this.")
def up(**kw: Any) -> None:
    """Everything in one process tree: embedded NATS, engine, worker, auditor and dashboard."""
    from jetdag.engine.launch import run_up

    run_async(run_up(**kw))


@main.command()
@nats_opt
@data_opt
@opt("--engine-id", help="Names this engine in leases; default host-pid.")
@replicas_opt
def engine(nats: str | None, data: Path, engine_id: str | None, replicas: int) -> None:
    """The engine role alone: partitions, run actors and the submission inbox."""
    from jetdag.engine.launch import serve_roles

    run_async(serve_roles(find_nats(nats, data), engine=True, queues=[], engine_id=engine_id, replicas=replicas))


@main.command()
@nats_opt
@data_opt
@opt("--queue", "queues", multiple=True, default=["default"], show_default=True, help="Queues to serve.")
@opt("--import", "imports", multiple=True, help="Module(s) whose @handler functions this worker runs.")
@opt("--concurrency", default=32, show_default=True, help="Tasks run at once.")
@replicas_opt
@opt("--heartbeat", default=HEARTBEAT, show_default=True, type=click.FloatRange(min=MIN_INTERVAL),
     help="Seconds between heartbeats; after 3 missed ones the engines presume this worker dead.")  # fmt: skip
@opt("--label", "labels", multiple=True, metavar="NAME=VALUE",
     help="A label of this worker (gpu=true): it also takes the tasks that require it.")  # fmt: skip
@opt("--reload", is_flag=True, help="Import the --import modules again when their files change (SIGHUP does too).")
@opt("--worker-id", help="Names this worker (default host-pid-random); a worker started with the id of a dead one "
     "replaces it at once (a pod's name).")  # fmt: skip
def worker(
    nats: str | None, data: Path, queues: tuple[str, ...], imports: tuple[str, ...], concurrency: int, replicas: int,
    heartbeat: float, labels: tuple[str, ...], reload: bool, worker_id: str | None,
) -> None:  # fmt: skip
    """The worker role alone: pulls tasks of its queues and runs their handlers."""
    from jetdag.engine.launch import import_handlers, serve_roles

    offered = _labels(labels)
    import_handlers(imports)
    url = find_nats(nats, data)
    serving = serve_roles(
        url, engine=False, queues=list(queues), concurrency=concurrency, replicas=replicas, heartbeat=heartbeat,
        worker_id=worker_id, imports=imports, reload=reload, labels=offered,
    )  # fmt: skip
    run_async(serving)


def _labels(given: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for item in given:
        name, _, value = item.partition("=")
        if not (S.is_token(name) and S.is_token(value)):
            raise click.BadParameter(f"{item!r}: write NAME=VALUE, both of {S.LABEL_RULE}", param_hint="--label")
        labels[name] = value
    return labels


@main.command()
@nats_opt
@data_opt
@opt("--http", default="127.0.0.1:8080", show_default=True, help="Address to serve on (loopback only, for now).")
def web(nats: str | None, data: Path, http: str) -> None:
    """The web role alone: dashboard and HTTP API; run several behind a proxy, each fans out its own SSE."""
    from jetdag.engine.launch import serve_web

    with contextlib.suppress(ImportError):  # uvloop (uvicorn[standard]): SSE fan-out to thousands of browsers
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    run_async(serve_web(find_nats(nats, data), http))


@main.command()
@nats_opt
@data_opt
@opt("--db", type=click.Path(path_type=Path, dir_okay=False), help="The DuckDB file; default DATA/audit.duckdb.")
@opt("--retention-days", default=90.0, show_default=True, help="Forget finished runs older than this.")
@replicas_opt
def auditor(nats: str | None, data: Path, db: Path | None, retention_days: float, replicas: int) -> None:
    """The auditor role alone: every event into the DuckDB audit log, and SQL over it. One per file."""
    from jetdag.engine.launch import serve_roles

    url = find_nats(nats, data)
    audit = db or data / "audit.duckdb"
    run_async(serve_roles(url, engine=False, queues=[], audit=audit, retention_days=retention_days, replicas=replicas))


# --- the audit log --------------------------------------------------------------------------------


@main.command()
@click.argument("query", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--max-rows", default=10_000, show_default=True, help="Stop after this many rows.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds before the query is stopped.")
@click.option("--list", "list_saved", is_flag=True, help="List the saved queries (run one with `jetdag sql @NAME`).")
@nats_opt
@data_opt
def sql(
    query: str | None, fmt: str, max_rows: int, timeout: float, list_saved: bool, nats: str | None, data: Path
) -> None:
    """Read-only SQL over the audit log (tables: events, runs, tasks, attempts, workers, files, alerts).

    QUERY is one SELECT, or @NAME for a saved query."""
    if not list_saved and not query:
        raise click.UsageError("give a QUERY (one SELECT, or @NAME of a saved query), or --list")

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            if list_saved:
                saved = await client.audit("saved")
                if fmt == "json":
                    print_json(saved)
                else:
                    for q in saved:
                        click.echo(f"@{q['name']:16} {q['description']}")
                return 0
            assert query is not None
            if query.startswith("@"):
                result = await client.audit("sql", {"saved": query[1:], "max_rows": max_rows, "timeout": timeout})
            else:
                result = await client.sql(query, max_rows=max_rows, timeout=timeout)
        print_result(result, fmt)
        return 0

    run_async(go())


@main.group()
def audit() -> None:
    """Look after the audit log: prune old runs, export it to Parquet."""


@audit.command()
@opt("--days", type=float, help="Forget finished runs older than this many days (default: the auditor's retention).")
@nats_opt
@data_opt
@json_opt
def prune(days: float | None, nats: str | None, data: Path, as_json: bool) -> None:
    """Delete finished runs older than the retention now (live runs are never deleted)."""

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            removed = await client.audit("prune", {} if days is None else {"days": days})
        print_json(removed) if as_json else click.echo(", ".join(f"{n} {t}" for t, n in removed.items()) + " removed")
        return 0

    run_async(go())


@audit.command()
@opt("--to", "to", required=True, type=click.Path(path_type=Path, file_okay=False), help="Directory to write into.")
@nats_opt
@data_opt
@json_opt
def export(to: Path, nats: str | None, data: Path, as_json: bool) -> None:
    """Write every table as Parquet under DIR (by day), on the auditor's machine."""
    target = str(to.resolve())

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            done = await client.audit("export", {"to": target})
        print_json(done) if as_json else click.echo("\n".join(done["files"]))
        return 0

    run_async(go())


@audit.command()
@opt("--from", "source", required=True, type=click.Path(path_type=Path, file_okay=False, exists=True),
     help="A directory written by `jetdag audit export`.")  # fmt: skip
@opt("--db", type=click.Path(path_type=Path, dir_okay=False), help="The DuckDB file; default DATA/audit.duckdb.")
@data_opt
@json_opt
def restore(source: Path, db: Path | None, data: Path, as_json: bool) -> None:
    """Load an export into the audit log file; run it while no auditor has the file open."""
    from jetdag.engine.audit.store import AuditStore

    try:
        loaded = AuditStore(db or data / "audit.duckdb").restore(source)
    except JetdagError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    print_json(loaded) if as_json else click.echo(", ".join(f"{n} {t}" for t, n in loaded.items()) + " restored")


# --- definitions ----------------------------------------------------------------------------------


def _load(files: tuple[Path, ...]) -> Validated:
    from jetdag.engine.definitions import validate_files

    return validate_files([str(f) for f in files])


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_opt
def validate(files: tuple[Path, ...], as_json: bool) -> None:
    """Check definitions (YAML, TOML, .py) without registering them; exit 2 on any error. Warnings (stderr, or
    --json's "warnings") leave the exit code alone."""
    specs, errors, warnings = _load(files)
    if as_json:
        print_json(
            {
                "workflows": [s.name for s in specs],
                "errors": [str(e) for e in errors],
                "warnings": [str(w) for w in warnings],
            }
        )
    else:
        for w in warnings:  # worth a word, never a refusal
            click.echo(str(w), err=True)
        for e in errors:
            click.echo(str(e), err=True)
        if not errors:
            click.echo(f"ok: {len(specs)} workflow(s): {', '.join(s.name for s in specs)}")
    sys.exit(2 if errors else 0)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@nats_opt
@data_opt
@json_opt
def apply(files: tuple[Path, ...], nats: str | None, data: Path, as_json: bool) -> None:
    """Register definitions; prints created / updated / unchanged for each. Nothing is applied on an error;
    warnings go to stderr and apply goes on."""
    specs, errors, warnings = _load(files)
    for w in warnings:  # on stderr even with --json, whose stdout is the list of results
        click.echo(str(w), err=True)
    if errors:
        for e in errors:
            click.echo(str(e), err=True)
        sys.exit(2)

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            results = [(spec.name, *(await client.apply(spec))) for spec in specs]
        if as_json:
            print_json([{"workflow": n, "result": r.value, "version": v} for n, r, v in results])
        else:
            for name, result, version in results:
                click.echo(f"{name}: {result.value} (version {version})")
        return 0

    run_async(go())


# --- runs -----------------------------------------------------------------------------------------


def _param(values: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected key=value", param_hint="-p")
        try:
            params[key] = orjson.loads(raw)  # numbers, booleans, lists and maps as JSON
        except orjson.JSONDecodeError:
            params[key] = raw
    return params


@main.command()
@click.argument("workflow")
@click.option("-p", "--param", "params", multiple=True, help="A run parameter key=value (JSON values allowed).")
@click.option("--wait", is_flag=True, help="Wait for the run; exit 0 if it succeeded, 1 otherwise.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds (exit 1).")
@click.option(
    "--at",
    "at",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]),
    help="The run's logical time in UTC ({yyyy}… in templates), for backfills. Default: now.",
)
@click.option("-m", "--meta", "metas", multiple=True, help="Run metadata key=value ({meta:key} in templates).")
@nats_opt
@data_opt
@json_opt
def submit(
    workflow: str, params: tuple[str, ...], wait: bool, timeout: float | None, at: dt.datetime | None,
    metas: tuple[str, ...], nats: str | None, data: Path, as_json: bool,
) -> None:  # fmt: skip
    """Start a run; prints its id alone on the first line."""
    parsed = _param(params)
    meta = _param(metas)
    logical_time = at.replace(tzinfo=dt.UTC) if at else None

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            run_id = await client.submit(workflow, parsed, logical_time=logical_time, meta=meta)
            click.echo(run_id)
            if not wait:
                return 0
            view = await client.wait(run_id, timeout)
        if as_json:
            print_json(view)
        else:
            _print_run(view)
        return 0 if view["status"] == "succeeded" else 1

    run_async(go())


@main.command()
@click.argument("run_id")
@click.option("--summary", is_flag=True, help="Timings from the audit log: waits, runs, stages, critical path.")
@nats_opt
@data_opt
@json_opt
def status(run_id: str, summary: bool, nats: str | None, data: Path, as_json: bool) -> None:
    """A run's status and each task's status and attempts."""

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            view = await (client.summary(run_id) if summary else client.status(run_id))
        if as_json:
            print_json(view)
        else:
            _print_summary(view) if summary else _print_run(view)
        return 0

    run_async(go())


# --- run control: exit 0 once the request is stored (the engine applies it), 2 for an unknown run or
# an impossible request (ControlError), as `status` does for an unknown run.


def _operator() -> str:
    """Who asked, for the run's record: the login name, when there is one."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without USER): the request is still fine
        return ""


def _control(verb: str, run_id: str, nats: str | None, data: Path, as_json: bool, **kw: Any) -> None:
    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            await getattr(client, verb)(run_id, by=_operator(), **kw)
        print_json({"run_id": run_id, "requested": verb}) if as_json else click.echo(f"run {run_id}: {verb} requested")
        return 0

    run_async(go())


@main.command()
@click.argument("run_id")
@click.option("--reason", default="", help="Why; kept in the run's error and the audit log.")
@nats_opt
@data_opt
@json_opt
def cancel(run_id: str, reason: str, nats: str | None, data: Path, as_json: bool) -> None:
    """Cancel a run: its unfinished tasks are cancelled and running handlers are interrupted."""
    _control("cancel", run_id, nats, data, as_json, reason=reason)


@main.command()
@click.argument("run_id")
@nats_opt
@data_opt
@json_opt
def pause(run_id: str, nats: str | None, data: Path, as_json: bool) -> None:
    """Pause a run: nothing new is dispatched; running tasks finish."""
    _control("pause", run_id, nats, data, as_json)


@main.command()
@click.argument("run_id")
@nats_opt
@data_opt
@json_opt
def resume(run_id: str, nats: str | None, data: Path, as_json: bool) -> None:
    """Resume a paused run: every task that became ready is dispatched."""
    _control("resume", run_id, nats, data, as_json)


@main.command()
@click.argument("run_id")
@click.argument("task")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@nats_opt
@data_opt
@json_opt
def ignore(run_id: str, task: str, reason: str, nats: str | None, data: Path, as_json: bool) -> None:
    """Mark a failed task ignored: it counts as a success for its children, and the run goes on."""
    _control("ignore", run_id, nats, data, as_json, task=task, reason=reason)


@main.command()
@click.argument("run_id")
@click.option("--from", "from_task", help="Run this task and everything downstream of it again; keep the rest.")
@click.option("--wait", is_flag=True, help="Wait for the new run; exit 0 if it succeeded, 1 otherwise.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds (exit 1).")
@nats_opt
@data_opt
@json_opt
def rerun(
    run_id: str, from_task: str | None, wait: bool, timeout: float | None, nats: str | None, data: Path, as_json: bool
) -> None:
    """Start a new run of a finished run; prints the new run's id alone on the first line.

    Without --from it runs the tasks that did not succeed and everything downstream of them."""

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            new = await client.rerun(run_id, from_task)
            click.echo(new)
            if not wait:
                return 0
            view = await client.wait(new, timeout)
        print_json(view) if as_json else _print_run(view)
        return 0 if view["status"] == "succeeded" else 1

    run_async(go())


@main.command()
@opt("--workflow", help="Only runs of this workflow.")
@opt("--status", help="Only runs in this status (running, succeeded, failed, …).")
@opt("--limit", default=100, show_default=True, help="At most this many, newest first.")
@nats_opt
@data_opt
@json_opt
def runs(workflow: str | None, status: str | None, limit: int, nats: str | None, data: Path, as_json: bool) -> None:
    """Runs, newest first."""

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            views = await client.runs_list(workflow=workflow, status=status, limit=limit)
        if as_json:
            print_json(views)
            return 0
        click.echo(f"{'RUN':<28} {'WORKFLOW':<24} {'STATUS':<10} CREATED")
        for v in views:
            from datetime import datetime

            created = datetime.fromtimestamp(v["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{v['run_id']:<28} {v['workflow']:<24} {v['status']:<10} {created}")
        return 0

    run_async(go())


@main.command()
@nats_opt
@data_opt
@json_opt
def workers(nats: str | None, data: Path, as_json: bool) -> None:
    """Workers by their heartbeats: queues, running tasks, age of the last beat, alive or presumed dead."""

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            views = await client.workers()
        if as_json:
            print_json(views)
            return 0
        click.echo(f"{'WORKER':<36} {'HOST':<20} {'PID':>7}  {'QUEUES':<20} {'RUNNING':>7} {'LAST BEAT':>9}  STATE")
        for w in views:
            queues = ",".join(map(str, w["queues"]))
            ident, host, pid = (str(w[k] if w[k] is not None else "-") for k in ("id", "host", "pid"))
            click.echo(
                f"{ident:<36} {host:<20} {pid:>7}  {queues:<20} {w['running']:>7} {w['age']:>8.1f}s  {w['state']}"
            )
        return 0

    run_async(go())


# --- triggers: schedules and backfills --------------------------------------------------------------


def _moment(value: str, option: str) -> dt.datetime:
    """ISO 8601 (`2026-11-01`, `2026-11-01T13:00`, with `Z` or an offset); without a zone it is UTC."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected ISO 8601, like 2026-11-01 or 2026-11-01T13:00Z", param_hint=option
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@main.command()
@click.argument("workflow")
@click.option("--from", "start", required=True, help="The first tick (ISO 8601, UTC unless it says otherwise).")
@click.option("--to", "end", required=True, help="The last tick, included.")
@click.option("--by", type=click.Choice(["hour", "day", "month"]), help="Step from --from by this, not by the cron.")
@click.option("--trigger", help="Only this clock trigger (its key, or the phase it starts at).")
@click.option("-p", "--param", "params", multiple=True, help="A run parameter key=value (JSON values allowed).")
@click.option("-m", "--meta", "metas", multiple=True, help="Run metadata key=value ({meta:key} in templates).")
@click.option("--dry-run", is_flag=True, help="Print the runs it would start, and start none.")
@nats_opt
@data_opt
@json_opt
def backfill(
    workflow: str, start: str, end: str, by: str | None, trigger: str | None, params: tuple[str, ...],
    metas: tuple[str, ...], dry_run: bool, nats: str | None, data: Path, as_json: bool,
) -> None:  # fmt: skip
    """Start the runs a workflow's schedule would have started from --from to --to (flowlord's backload).

    Prints them first; then starts those that do not exist yet. Run again, it starts nothing twice, and
    nothing the scheduler already started for those ticks."""
    low, high = _moment(start, "--from"), _moment(end, "--to")
    parsed, meta = _param(params), _param(metas)

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            plan = await client.backfill(
                workflow, low, high, by=by, trigger=trigger, params=parsed, meta=meta, dry_run=True
            )
            new = [r for r in plan if not r["exists"]]
            if not as_json:
                click.echo(f"backfill of {workflow}: {len(plan)} run(s), {len(new)} new, {len(plan) - len(new)} there")
                for r in plan:
                    when = dt.datetime.fromtimestamp(r["logical_time"], dt.UTC).isoformat(timespec="seconds")
                    click.echo(f"  {when.replace('+00:00', 'Z')}  {r['run_id']}  {'exists' if r['exists'] else 'new'}")
            if dry_run or not new:
                print_json(plan) if as_json else None
                return 0
            with click.progressbar(length=len(new), label="starting", file=sys.stderr) as bar:
                done = 0

                def step(started: int, _: int) -> None:
                    nonlocal done
                    bar.update(started - done)
                    done = started

                plan = await client.backfill(
                    workflow, low, high, by=by, trigger=trigger, params=parsed, meta=meta, progress=step
                )
        if as_json:
            print_json(plan)
        else:
            click.echo(f"started {len(new)} run(s)")
        return 0

    run_async(go())


@main.command()
@click.argument("workflow", required=False)
@click.option("--on", "switch", flag_value="on", help="Switch the workflow's schedule on.")
@click.option("--off", "switch", flag_value="off", help="Switch it off: its triggers start no runs.")
@nats_opt
@data_opt
@json_opt
def schedules(workflow: str | None, switch: str | None, nats: str | None, data: Path, as_json: bool) -> None:
    """The workflows triggers start: on or off, each trigger's next and last fire; or switch one on or off."""
    if switch and not workflow:
        raise click.UsageError("--on/--off need a WORKFLOW")

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            if switch:
                views = [await client.toggle_schedule(workflow or "", switch == "on", by=_operator())]
            elif workflow:
                views = [await client.schedule(workflow)]
            else:
                views = await client.scheduled()
        if as_json:
            print_json(views)
            return 0
        rows = [("WORKFLOW", "STATE", "TRIGGER", "WHAT", "NEXT FIRE", "LAST FIRE")]
        for view in views:
            for t in view["triggers"] or [{}]:
                last = t.get("last_fire")
                last_text = dt.datetime.fromtimestamp(last, dt.UTC).isoformat(timespec="seconds") if last else "-"
                what = str(t.get("what") or "-") + (f" ({t['timezone']})" if t.get("timezone") else "")
                state = "on" if view["enabled"] else "off"
                key, next_fire = str(t.get("key", "-")), str(t.get("next_fire") or "-")
                rows.append((view["workflow"], state, key, what, next_fire, last_text))
        # Columns as wide as their widest cell: trigger keys such as cron:stamp:extract vary a lot.
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            click.echo(" ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + " " + row[5])
        return 0

    run_async(go())


# --- benchmarks ------------------------------------------------------------------------------------

BENCH_WORKLOADS = {
    "throughput": "throughput.py",
    "chain": "chain.py",
    "fanout": "fanout.py",
    "runs": "runs.py",
    "scale": "scale.py",
    "live-runs": "live_runs.py",
    "recovery": "recovery.py",
    "audit": "audit.py",
    "sse": "sse.py",
    "tasks-page": "tasks_page.py",
    "ceiling": "ceiling.py",
    "scheduler": "scheduler.py",
    "filestorm": "filestorm.py",
    "plot": "plot.py",
    "compare": "compare.py",
}


def _bench_dir() -> Path:
    """bench/ of the source checkout this package is installed (editable) from."""
    import jetdag.engine

    return Path(jetdag.engine.__file__).resolve().parents[1] / "bench"


def _bench_summary(script: Path) -> str:
    """The first line of the workload's docstring, read without importing it (its imports may be heavy)."""
    import ast

    try:
        doc = ast.get_docstring(ast.parse(script.read_text()))
    except (OSError, SyntaxError):
        return "(not found)"
    return doc.strip().splitlines()[0] if doc else ""


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("workload", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--list", "list_all", is_flag=True, help="List the workloads (also what no WORKLOAD does).")
def bench(workload: str | None, args: tuple[str, ...], list_all: bool) -> None:
    """Run a benchmark of bench/ (a source checkout): `jetdag bench WORKLOAD [its options, --json, --help]`.

    Everything after WORKLOAD goes to it unchanged; the exit code is its own.
    """
    import signal
    import subprocess

    root = _bench_dir()
    if not root.is_dir():
        click.echo(f"error: jetdag bench runs from a source checkout: {root} not found", err=True)
        sys.exit(2)
    if list_all or workload is None:
        width = max(map(len, BENCH_WORKLOADS))
        for name, file in BENCH_WORKLOADS.items():
            click.echo(f"{name:<{width}}  {_bench_summary(root / file)}")
        click.echo("\nRun one: jetdag bench WORKLOAD [--json] [--no-save] [options]; its options: --help.")
        return
    module = BENCH_WORKLOADS.get(workload.replace("_", "-"))
    if module is None:
        click.echo(f"error: no workload {workload!r}; one of: {', '.join(BENCH_WORKLOADS)}", err=True)
        sys.exit(2)
    script = root / module
    if not script.is_file():
        click.echo(f"error: jetdag bench runs from a source checkout: {script} not found", err=True)
        sys.exit(2)
    proc = subprocess.Popen([sys.executable, str(script), *args])
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # the workload tears its processes down
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # the workload got the Ctrl-C too: let it tear its processes down
            continue
    sys.exit(128 - code if code < 0 else code)


def _print_summary(s: dict[str, Any]) -> None:
    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}s"

    click.echo(f"run {s['run_id']}  {s['status']}  duration {secs(s['duration_s'])}  retries {s['total_retries']}")
    click.echo(f"critical path {secs(s['critical_path_s'])}: {' -> '.join(s['critical_path'])}")
    if s.get("failed_task"):
        click.echo(f"caused by {s['failed_task']}: {s['failure']}")
    click.echo(f"  {'task':24} {'status':10} {'attempts':>8} {'wait':>10} {'run':>10} {'elapsed':>10}  stage")
    for t in s["tasks"]:
        click.echo(
            f"  {t['task']:24} {t['status']:10} {t['attempts']:>8} {secs(t['wait_s']):>10} {secs(t['run_s']):>10}"
            f" {secs(t['elapsed_s']):>10}  {t['depth']}"
        )


def _print_run(view: dict[str, Any]) -> None:
    click.echo(f"run {view['run_id']}  workflow {view['workflow']}  {view['status']}")
    if view.get("rerun_of"):
        click.echo(f"  rerun of {view['rerun_of']}")
    if view.get("error"):
        click.echo(f"  error: {view['error']}")
    for name, task in view.get("tasks", {}).items():
        line = f"  {name:<24} {task['status']:<10} attempts {task['attempts']}"
        if task.get("error") and task["status"] != "succeeded":
            line += f"  {task['error'][:120]}"
        if task.get("waiting"):
            line += f"  waiting: {task['waiting']}"
        click.echo(line)


def cli() -> None:
    """Entry point with jetdag.toml defaults applied."""
    known = {name: {p.name for p in cmd.params if p.name} for name, cmd in main.commands.items()}
    try:
        defaults = load_defaults(Path.cwd() / CONFIG_FILE, known)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        main(default_map=defaults)
    except JetdagError as exc:  # raised before a command's own handling began (finding the stack, say)
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
