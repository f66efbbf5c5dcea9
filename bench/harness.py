"""What every benchmark of the full path shares: the stack as separate processes, records, printing.

- `Stack`: a nats-server in a temp dir and the `jetdag` processes started on it (each its own
  process, output in a log file of its own); on the way out, whatever the reason (an error, a
  timeout, Ctrl-C), every process is terminated and waited for, then the server is stopped.
  `stack()` is the usual shape: one `jetdag engine` and W x `jetdag worker --concurrency C`, ready.
- `Steps`: the engine's step records (`jd.evt.<p>.<run>.step`, core NATS) timestamped on arrival.
- `percentile`, `record`, `finish` (append to `results/<bench>.jsonl`, print a table or the JSON).

The workloads run as scripts with bench/ on sys.path, so they `import harness` and `from machine import machine`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import msgpack
import orjson
from machine import machine
from rich.console import Console
from rich.table import Table

from jetdag.engine import subjects as S
from jetdag.engine.audit.store import Message
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.nats.server import NatsServer
from jetdag.engine.nats.setup import Topology, close, connect, ensure

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
RUN_DONE = frozenset({"succeeded", "failed", "cancelled"})
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`; Ctrl-C and SIGTERM cancel it, so `Stack` still tears everything down, and the exit
    code says which stopped it."""
    stopped_by: list[signal.Signals] = []

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def stop(signum: int, _frame: object) -> None:
            # A plain signal handler runs at once: Ctrl-C reaches the whole process group, and a worker that
            # exits of it before the loop would run a handler must not read as a crash (`check_alive`).
            stopped_by.append(signal.Signals(signum))
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        return await main

    try:
        return asyncio.run(guarded())
    except BaseException:
        if not stopped_by:
            raise
        what = "interrupted" if stopped_by[0] == signal.SIGINT else "terminated"
        print(f"{what}: every process stopped", file=sys.stderr)
        sys.exit(128 + stopped_by[0])


def _die_with_parent() -> None:
    # Between fork and exec: Linux kills the child if the benchmark dies without tearing down (kill -9). SIGKILL,
    # not SIGTERM: the nats-server dies with the benchmark too, and an engine stopping gracefully without its NATS
    # lingers (over 45 s seen).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`jetdag <args>` as a process of its own, stdout and stderr appended to `log`."""
    code = "from jetdag.engine.cli import cli; cli()"
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM to all (they drain in parallel), then wait for each; SIGKILL for one that does not exit in time."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


WORKERS = 2
CONCURRENCY = 256
"""Every workload's worker processes by default: one per core of the reference machine, each with as many
slots as an async worker gives no-op tasks (taskiq's workers hold 100 each by default; Celery's prefork
pool runs 2 processes, see compare.py). With 2 slots each, four tasks in flight made the worker's fetch
and result round trips, not the engine, the bound of `runs` (490 runs/s at 2, 1,130 at 256)."""


class Stack:
    """nats-server (JetStream in a temp dir) and the processes started with `spawn`; all stopped on exit."""

    def __init__(self, *, durability: str = "fast") -> None:
        self.durability = durability
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ""
        self.nc: Any = None
        self.js: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: NatsServer | None = None

    @property
    def dir(self) -> Path:
        assert self._tmp is not None, "the stack is not started"
        return Path(self._tmp.name)

    async def __aenter__(self) -> Stack:
        self._tmp = tempfile.TemporaryDirectory(prefix="jetdag-bench-")
        try:
            self._server = NatsServer(self.dir / "nats", sync_always=self.durability == "strict")
            self.url = self._server.start()
            self.nc = await connect(self.url, "bench")
            self.js = self.nc.jetstream()
            await ensure(self.js, Topology())
        except BaseException:
            await self.teardown(failed=True)
            raise
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.teardown(failed=t is not None and not issubclass(t, KeyboardInterrupt | asyncio.CancelledError))

    async def teardown(self, failed: bool = False) -> None:
        try:
            stop(self.procs.values())
            if failed:
                self.print_logs()
            if self.nc is not None:
                await close(self.nc)
        finally:
            if self._server is not None:
                self._server.stop()
            if self._tmp is not None:
                self._tmp.cleanup()

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def print_logs(self, lines: int = 20) -> None:
        """The last lines of each process's log on stderr: why a run failed is usually there."""
        for name in self.procs:
            with contextlib.suppress(OSError):
                tail = self.log(name).read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    print(f"--- {name}.log (last {len(tail)} lines)", *tail, sep="\n", file=sys.stderr)

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """`jetdag <args> --nats <this server>` as process `name` (unique), logging to `log(name)`."""
        assert name not in self.procs, f"a process named {name} exists"
        self.procs[name] = proc = spawn(self.log(name), *args, "--nats", self.url)
        return proc

    def engine(self, name: str = "engine", engine_id: str | None = None) -> subprocess.Popen[bytes]:
        return self.spawn(name, "engine", *(["--engine-id", engine_id] if engine_id else []))

    def workers(self, n: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
        return [self.spawn(f"worker{i}", "worker", "--concurrency", str(concurrency)) for i in range(n)]

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each kind of process: nats-server, engine(s), workers, this benchmark."""
        out = {"server": cpu_seconds(self._server.proc.pid) if self._server and self._server.proc else 0.0}
        for name, p in self.procs.items():
            kind = name.rstrip("0123456789")
            out[kind] = out.get(kind, 0.0) + cpu_seconds(p.pid)
        out["bench"] = cpu_seconds(os.getpid())
        return out

    def cpu_per(self, before: dict[str, float], n: int) -> dict[str, float]:
        """Milliseconds of CPU per unit of work (n units) of each kind of process since `before`."""
        after = self.cpu()
        return {f"cpu_ms_{k}": round((after[k] - before.get(k, 0.0)) * 1000 / n, 3) for k in after}

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}")  # teardown prints the tail of its log

    async def wait_ready(self, workers: int, timeout: float = 60.0) -> None:
        """Until every partition's lease is held and `workers` workers have sent a heartbeat."""
        leases, live = await self.js.key_value(S.LEASES_KV), await self.js.key_value(S.WORKERS_KV)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(Exception):  # NoKeysError while a bucket is still empty
                if len(await leases.keys()) >= S.DEFAULT_PARTITIONS and len(await live.keys()) >= workers:
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"engine or {workers} workers not ready after {timeout:g} s")

    async def steps(self, tasks: bool = False) -> Steps:
        """Step records from now on (the subscription is in place when this returns)."""
        steps = Steps(tasks=tasks)
        steps.check = self.check_alive
        await self.nc.subscribe("jd.evt.*.*.step", cb=steps.on_step)
        await self.nc.flush()
        return steps


@contextlib.asynccontextmanager
async def stack(
    workers: int = WORKERS, concurrency: int = CONCURRENCY, durability: str = "fast"
) -> AsyncIterator[Stack]:
    """nats-server, `jetdag engine` and `workers` x `jetdag worker --concurrency C`, ready for work."""
    async with Stack(durability=durability) as s:
        s.engine()
        s.workers(workers, concurrency)
        await s.wait_ready(workers)
        yield s


class Steps:
    """The step records of every run, timestamped (`time.perf_counter`) as they arrive here.

    `finished[run]`: when the step that ended the run arrived; `outcome[run]` its status. With
    `tasks`, `succeeded[(run, task)]`: when the step in which that task succeeded arrived.
    """

    def __init__(self, tasks: bool = False) -> None:
        self.tasks = tasks
        self.seq: dict[str, int] = {}
        self.status: dict[str, str] = {}
        self.finished: dict[str, float] = {}
        self.outcome: dict[str, str] = {}
        self.succeeded: dict[tuple[str, str], float] = {}
        self.largest = 0
        """The size in bytes of the largest step record seen."""
        self.check: Callable[[], None] | None = None
        """Called about once a second while `wait` waits; raises to give up (`Stack.check_alive`)."""
        self._waiting: set[str] = set()
        self._all = asyncio.Event()

    async def on_step(self, msg: Any) -> None:
        self.largest = max(self.largest, len(msg.data))
        self.seen(msgpack.unpackb(msg.data), time.perf_counter())

    def seen(self, step: dict[str, Any], at: float) -> None:
        run, status = step["run"], step["status"]
        if step["seq"] > self.seq.get(run, -1):
            self.seq[run], self.status[run] = step["seq"], status
        if self.tasks:
            for t in step.get("transitions", ()):
                if t.get("task") is not None and t.get("status") == "succeeded":
                    self.succeeded.setdefault((run, t["task"]), at)
        if status in RUN_DONE and run not in self.finished:
            self.finished[run], self.outcome[run] = at, status
            self._waiting.discard(run)
            if not self._waiting:
                self._all.set()

    async def wait(self, runs: Iterable[str], timeout: float) -> None:
        """Until every one of `runs` has ended; RuntimeError when one did not succeed."""
        runs = list(runs)
        self._waiting = {r for r in runs if r not in self.finished}
        self._all = asyncio.Event()
        deadline = time.monotonic() + timeout
        while self._waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self._waiting)} runs not finished after {timeout:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all.wait(), min(1.0, left))
            if self.check is not None:  # a crashed engine or worker fails the benchmark now, not at the timeout
                self.check()
        failed = [r for r in runs if self.outcome.get(r) != "succeeded"]
        if failed:
            raise RuntimeError(f"{len(failed)} runs did not succeed, e.g. {failed[0]}: {self.outcome[failed[0]]}")


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `check` until it holds; TimeoutError(`what`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(interval)


def chain_spec(name: str, steps: int, handler: str = "noop") -> WorkflowSpec:
    """s0 -> s1 -> ... -> s<steps-1>."""
    return WorkflowSpec(
        name, tuple(TaskSpec(f"s{i}", handler, depends_on=(f"s{i - 1}",) if i else ()) for i in range(steps))
    )


def fan_spec(name: str, width: int, handler: str = "noop") -> WorkflowSpec:
    """root -> `width` tasks in parallel -> join."""
    middle = tuple(TaskSpec(f"t{i}", handler, depends_on=("root",)) for i in range(width))
    join = TaskSpec("join", handler, depends_on=tuple(t.name for t in middle))
    return WorkflowSpec(name, (TaskSpec("root", handler), *middle, join))


def audit_batches(
    runs: int, size: int, t0: float, events: Callable[[int, float], Iterable[tuple[str, bytes]]], spacing: float
) -> Iterator[list[Message]]:
    """Run r's `events(r, t0 + r * spacing)` as audit-log messages numbered from 1, in batches of `size`:
    what the auditor receives, for the audit and tasks-page benchmarks."""
    batch: list[Message] = []
    seq = 0
    for r in range(runs):
        for subject, data in events(r, t0 + r * spacing):
            seq += 1
            batch.append(Message(seq, subject, data, t0))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), interpolated linearly between the closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (/proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces: fields after ')'
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat


def status_mb(pid: int, key: str) -> float:
    """A memory line of /proc/<pid>/status (VmRSS, VmHWM, …) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def parser(doc: str | None, bench: str) -> argparse.ArgumentParser:
    """An argument parser with the module docstring as help and the options every workload has."""
    p = argparse.ArgumentParser(
        prog=f"jetdag bench {bench.replace('_', '-')}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the record as JSON only")
    p.add_argument("--no-save", action="store_true", help=f"do not append the record to {RESULTS / bench}.jsonl")
    return p


def add_workers(p: argparse.ArgumentParser) -> None:
    """--workers and --concurrency, with the defaults every workload shares."""
    p.add_argument("--workers", type=int, default=WORKERS, help=f"worker processes (default {WORKERS})")
    p.add_argument(
        "--concurrency", type=int, default=CONCURRENCY, help=f"tasks per worker at once (default {CONCURRENCY})"
    )


def record(bench: str, **fields: Any) -> dict[str, Any]:
    """A result as saved: the benchmark's name, when, its fields, and the machine."""
    return {"bench": bench, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields, "machine": machine()}


def save(rec: dict[str, Any]) -> Path:
    path = RESULTS / f"{rec['bench']}.jsonl"
    path.parent.mkdir(exist_ok=True)
    with path.open("ab") as f:
        f.write(orjson.dumps(rec) + b"\n")
    return path


def finish(
    args: argparse.Namespace, rec: dict[str, Any], title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Save the record (unless --no-save), then print it as JSON (--json) or as a table."""
    path = None if args.no_save else save(rec)
    if args.json:
        print(orjson.dumps(rec).decode())
        return
    m = rec["machine"]
    table = Table(*columns)
    for row in rows:
        table.add_row(*(f"{v:,}" if type(v) is int else str(v) for v in row))
    console = Console()
    if not console.is_terminal:  # piped: rich's default of 80 columns would cut the table's cells
        console = Console(width=200)
    console.print(title, highlight=False, markup=False)
    console.print(table)
    console.print(
        f"on {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Python {m['python']}, {m['nats_server']}",
        highlight=False,
        markup=False,
    )
    if path is not None:
        console.print(f"saved to {path}", highlight=False, markup=False)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
