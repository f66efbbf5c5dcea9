"""The `jetdag` command: one function per verb. Exit codes: 0 ok, 1 failed, 2 bad input or usage.

This is the composition root: the one module of `engine` that may import `actors` and `web`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
import orjson

from jetdag.engine.config import CONFIG_FILE, env_var, load_defaults
from jetdag.engine.errors import ConfigError, JetdagError, NotFound
from jetdag.engine.home import find_nats

log = logging.getLogger("jetdag")


def opt(*names: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option that also reads JETDAG_<NAME> from the environment."""
    long = next(n for n in names if n.startswith("--"))
    return click.option(*names, envvar=env_var(long), show_envvar=True, **kwargs)


nats_opt = opt("--nats", help="NATS URL; default: the one `jetdag up` wrote into the data dir.")
data_opt = opt("--data", default=".jetdag", show_default=True, type=click.Path(path_type=Path), help="Data dir.")
json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def run_async(coro: Coroutine[Any, Any, int]) -> None:
    """Run `coro` and exit with its code; jetdag errors print their message and exit 2."""
    try:
        code = asyncio.run(coro)
    except NotFound as exc:
        click.echo(f"error: {exc}", err=True)
        code = 2
    except (JetdagError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        code = 2
    except TimeoutError:
        click.echo("error: timed out", err=True)
        code = 1
    sys.exit(code)


def print_json(obj: Any) -> None:
    click.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


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
@opt("--no-examples", is_flag=True, help="Do not load the example workflows.")
@opt("--queue", "queues", multiple=True, default=["default"], show_default=True, help="Queues the worker serves.")
@opt("--concurrency", default=32, show_default=True, help="Tasks the worker runs at once.")
@opt("--durability", type=click.Choice(["fast", "strict"]), default="fast", show_default=True,
     help="strict: fsync every write (sync_interval always); fast: the server default.")  # fmt: skip
def up(**kw: Any) -> None:
    """Everything in one process tree: embedded NATS, engine, worker and dashboard."""
    from jetdag.engine.launch import run_up

    run_async(run_up(**kw))


@main.command()
@nats_opt
@data_opt
@opt("--engine-id", help="Names this engine in leases; default host-pid.")
def engine(nats: str | None, data: Path, engine_id: str | None) -> None:
    """The engine role alone: partitions, run actors and the submission inbox."""
    from jetdag.engine.launch import serve_roles

    run_async(serve_roles(find_nats(nats, data), engine=True, queues=[], engine_id=engine_id))


@main.command()
@nats_opt
@data_opt
@opt("--queue", "queues", multiple=True, default=["default"], show_default=True, help="Queues to serve.")
@opt("--import", "imports", multiple=True, help="Module(s) whose @handler functions this worker runs.")
@opt("--concurrency", default=32, show_default=True, help="Tasks run at once.")
def worker(nats: str | None, data: Path, queues: tuple[str, ...], imports: tuple[str, ...], concurrency: int) -> None:
    """The worker role alone: pulls tasks of its queues and runs their handlers."""
    from jetdag.engine.launch import import_handlers, serve_roles

    import_handlers(imports)
    run_async(serve_roles(find_nats(nats, data), engine=False, queues=list(queues), concurrency=concurrency))


# --- definitions ----------------------------------------------------------------------------------


def _load(files: tuple[Path, ...]) -> tuple[list[Any], list[Any]]:
    from jetdag.engine.definitions import validate_files

    return validate_files([str(f) for f in files])


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_opt
def validate(files: tuple[Path, ...], as_json: bool) -> None:
    """Check definitions (YAML, .py) without registering them; exit 2 on any error."""
    specs, errors = _load(files)
    if as_json:
        print_json({"workflows": [s.name for s in specs], "errors": [str(e) for e in errors]})
    else:
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
    """Register definitions; prints created / updated / unchanged for each. Nothing is applied on an error."""
    specs, errors = _load(files)
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
@nats_opt
@data_opt
@json_opt
def status(run_id: str, nats: str | None, data: Path, as_json: bool) -> None:
    """A run's status and each task's status and attempts."""

    async def go() -> int:
        from jetdag.engine.client import Client

        async with await Client.connect(find_nats(nats, data)) as client:
            view = await client.status(run_id)
        print_json(view) if as_json else _print_run(view)
        return 0

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


def _print_run(view: dict[str, Any]) -> None:
    click.echo(f"run {view['run_id']}  workflow {view['workflow']}  {view['status']}")
    if view.get("error"):
        click.echo(f"  error: {view['error']}")
    for name, task in view.get("tasks", {}).items():
        line = f"  {name:<24} {task['status']:<10} attempts {task['attempts']}"
        if task.get("error") and task["status"] != "succeeded":
            line += f"  {task['error'][:120]}"
        click.echo(line)


def cli() -> None:
    """Entry point with jetdag.toml defaults applied."""
    known = {name: {p.name for p in cmd.params if p.name} for name, cmd in main.commands.items()}
    try:
        defaults = load_defaults(Path.cwd() / CONFIG_FILE, known)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    main(default_map=defaults)
