"""What `jetdag up` and the single-role verbs start, and how they stop.

With cli.py this is the composition root: the only part of `engine` that imports `actors` and `web`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Iterable
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import uvicorn

from jetdag.actors.system import System
from jetdag.actors.worker import Worker
from jetdag.engine.client import Client
from jetdag.engine.definitions import validate_files
from jetdag.engine.errors import ConfigError
from jetdag.engine.follow import KINDS, definition_files, follow
from jetdag.engine.home import DataDir
from jetdag.engine.model import WorkflowSpec
from jetdag.engine.nats.server import NatsServer
from jetdag.engine.nats.setup import Topology
from jetdag.engine.reload import reload_modules, watch_modules
from jetdag.engine.runtime import tune_gc
from jetdag.engine.workers import HEARTBEAT
from jetdag.web.app import create_app

log = logging.getLogger("jetdag")


def import_handlers(modules: Iterable[str]) -> None:
    """Import the modules whose @handler functions a worker runs; a failure names the module."""
    sys.path.insert(0, str(Path.cwd()))
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise click.ClickException(f"--import {name}: {type(exc).__name__}: {exc}") from exc


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def serve_roles(
    url: str,
    *,
    engine: bool,
    queues: list[str],
    concurrency: int = 32,
    engine_id: str | None = None,
    audit: Path | None = None,
    retention_days: float = 90.0,
    audit_export_to: Path | None = None,
    replicas: int = 1,
    heartbeat: float = HEARTBEAT,
    worker_id: str | None = None,
    imports: tuple[str, ...] = (),
    reload: bool = False,
    labels: dict[str, str] | None = None,
) -> int:
    """Run the engine, a worker and/or the auditor until SIGINT/SIGTERM; a worker reloads `imports` on SIGHUP
    (and, with `reload`, when one of their files changes)."""
    tune_gc()
    stop = asyncio.Event()
    _stop_on_signals(stop)
    async with System(
        url, engine=engine, queues=queues, concurrency=concurrency, engine_id=engine_id, audit=audit,
        retention_days=retention_days, audit_export_to=audit_export_to, topology=Topology(replicas=replicas),
        heartbeat=heartbeat, worker_id=worker_id, labels=labels,
    ) as system:  # fmt: skip
        role = "engine" if engine else f"worker for {', '.join(queues)}" if queues else f"auditor of {audit}"
        click.echo(f"jetdag {role} connected to {url}; stop with Ctrl-C", err=True)
        reloading = None
        if system.worker is not None and imports:
            reloading = asyncio.create_task(_reload_on_demand(system.worker, imports, reload), name="reload")
        try:
            await _until(stop, system.wait())
        finally:
            if reloading is not None:
                reloading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reloading
    return 0


async def _reload_on_demand(worker: Worker, modules: tuple[str, ...], watch: bool) -> None:
    """Import `modules` again on SIGHUP, and with `watch` when one of their files changes (README "Workers")."""
    asked = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, asked.set)
    watching = asyncio.create_task(watch_modules(modules, asked.set), name="reload watch") if watch else None
    try:
        while True:
            await asked.wait()
            asked.clear()
            for outcome in reload_modules(modules):
                click.echo(f"reload: {outcome}", err=True)
            await worker.handlers_changed()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching


async def _until(stop: asyncio.Event, *others: Awaitable[Any]) -> None:
    """Wait for `stop` or the first of `others` to end (raising its error); tasks passed in keep running."""
    mine: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    mine += [asyncio.ensure_future(o) for o in others if not isinstance(o, asyncio.Future)]
    theirs = [o for o in others if isinstance(o, asyncio.Future)]
    done, _ = await asyncio.wait([*mine, *theirs], return_when=asyncio.FIRST_COMPLETED)
    for task in mine:
        task.cancel()
    for task in done:
        if not task.cancelled():
            task.result()


def _bind(http: str) -> socket.socket:
    host, sep, port = http.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--http {http!r}: expected HOST:PORT, like 127.0.0.1:8080")
    host = host.strip("[]") or "127.0.0.1"
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"--http {http}: jetdag binds only to loopback until API keys exist (a later release); use 127.0.0.1"
        )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--http {http}: cannot listen there ({exc.strerror}); pick another port") from None
    return sock


def _read_definitions(paths: list[str]) -> list[WorkflowSpec]:
    specs, errors, warnings = validate_files(paths)
    for error in errors:  # a bad file is reported; the good ones still load
        click.echo(f"skipped: {error}", err=True)
    for warning in warnings:
        click.echo(str(warning), err=True)
    return specs


async def _apply_definitions(url: str, specs: list[WorkflowSpec]) -> list[str]:
    async with await Client.connect(url) as client:
        for spec in specs:
            await client.apply(spec)
    return [s.name for s in specs]


async def _start_web(nats: str, sock: socket.socket) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """The dashboard and API on `sock`, serving until `server.should_exit`; returns once it listens.

    Open SSE streams get 2 s after a stop, then are cut: infinite streams must not hold up a restart.
    """
    web = uvicorn.Server(uvicorn.Config(create_app(nats), log_level="warning", timeout_graceful_shutdown=2))
    web.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # ours
    web_task = asyncio.create_task(web.serve(sockets=[sock]), name="web")
    while not web.started and not web_task.done():  # noqa: ASYNC110  (uvicorn has no started event)
        await asyncio.sleep(0.02)
    return web, web_task


def _url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}/"


async def serve_web(nats: str, http: str) -> int:
    """The web role alone (`jetdag web`): dashboard and API for the NATS at `nats`, until a signal."""
    tune_gc()
    stop = asyncio.Event()
    _stop_on_signals(stop)
    sock = _bind(http)
    try:
        async with await Client.connect(nats):  # a clear error now, not a traceback from the app's startup
            pass
        web, web_task = await _start_web(nats, sock)
        click.echo(f"jetdag web at {_url_of(sock)} for {nats}; stop with Ctrl-C", err=True)
        try:
            await _until(stop, web_task)
        finally:
            web.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await web_task
        return 0
    finally:
        sock.close()


async def run_up(
    http: str,
    data: Path,
    workflows: Path | None,
    nats: str | None,
    no_examples: bool,
    queues: tuple[str, ...],
    concurrency: int,
    durability: str,
    retention_days: float,
    replicas: int = 1,
    imports: tuple[str, ...] = (),
) -> int:
    """Embedded NATS (unless --nats), engine, worker and web in one process tree, until a signal."""
    import_handlers(imports)
    if replicas > 1 and nats is None:  # the embedded server is one node: it cannot hold a second copy
        raise ConfigError(f"--replicas {replicas} needs a NATS cluster: pass --nats URL of one (see deploy/nats/)")
    home = DataDir(data)
    home.lock()
    tune_gc()
    sock = _bind(http)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    server: NatsServer | None = None
    server_died = asyncio.Event()
    try:
        if nats is None:
            server = NatsServer(data / "nats", sync_always=durability == "strict", log_file=data / "nats.log")
            nats = server.start()
            _watch_child(server, server_died)
        engine_id = _engine_id(data)
        specs = _read_definitions(_definition_paths(workflows, no_examples))
        # One command runs what it loads: the worker also serves every queue those workflows use.
        served = list(dict.fromkeys([*queues, *(t.queue for spec in specs for t in spec.tasks)]))
        async with System(
            nats, queues=served, concurrency=concurrency, engine_id=engine_id, drain_timeout=10,
            audit=data / "audit.duckdb", retention_days=retention_days, topology=Topology(replicas=replicas),
        ) as system:  # fmt: skip
            names = await _apply_definitions(nats, specs)
            web, web_task = await _start_web(nats, sock)
            dashboard = _url_of(sock)
            home.write_endpoint(nats=nats, http=dashboard)
            click.echo(f"jetdag is up\n  dashboard  {dashboard}\n  nats       {nats}   (data in {data})")
            click.echo(f'  audit log  {data / "audit.duckdb"}   (jetdag sql "SELECT … FROM runs")')
            click.echo(f"  workflows  {', '.join(names) or '(none)'}\nStop with Ctrl-C.", nl=True)
            following = asyncio.create_task(_follow(nats, workflows), name="follow") if workflows else None
            try:
                await _until(stop, server_died.wait(), web_task, system.wait())
            finally:
                if following is not None:
                    following.cancel()
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await following
                web.should_exit = True
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await web_task
        if server_died.is_set():
            click.echo(f"error: nats-server exited unexpectedly; see {data / 'nats.log'}", err=True)
            return 1
        return 0
    finally:
        sock.close()
        if server:
            server.stop()
        home.unlock()


async def _follow(nats: str, workflows: Path) -> None:
    """Apply the definition files of `--workflows` again as they change (engine/follow.py)."""
    async with await Client.connect(nats) as client:

        async def apply(spec: WorkflowSpec) -> tuple[str, int]:
            result, version = await client.apply(spec)
            return result.value, version

        await follow(workflows, apply, lambda line: click.echo(line, err=True))


def _watch_child(server: NatsServer, died: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    proc = server.proc
    assert proc is not None

    def wait() -> None:
        proc.wait()
        loop.call_soon_threadsafe(died.set)

    threading.Thread(target=wait, daemon=True, name="nats-server-watch").start()


def _engine_id(data: Path) -> str:
    """Stable per data dir, so a restarted `up` takes its own leases back at once."""
    return "up-" + hashlib.sha1(str(data.resolve()).encode()).hexdigest()[:10]


def _definition_paths(workflows: Path | None, no_examples: bool) -> list[str]:
    paths = [] if no_examples else sorted(str(p) for p in files("jetdag.engine.examples").iterdir())
    paths = [p for p in paths if Path(p).suffix in KINDS and not Path(p).name.startswith("__")]
    if workflows:
        paths += [str(p) for p in definition_files(workflows)]
    return paths
