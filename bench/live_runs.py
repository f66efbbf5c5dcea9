"""Live runs: the engine's memory per live run actor and per passivated run.

nats-server and an engine as separate processes; the engine is this file run with `--child`, which is
`System(url, queues=[], idle_timeout=...)`, the engine role of `jetdag engine` with the run actors'
idle timeout set (the CLI does not expose it). The benchmark submits N runs of a one-task workflow
whose task goes to a queue no worker serves: each run is created, its task queued, and its actor then
waits for a result that does not come. After `--idle-timeout` seconds without an event an actor is
passivated (dropped from memory; the run lives on in KV `jd_runs`).

The engine's RSS (VmRSS of /proc/<pid>/status, after a `gc.collect()` in the engine) is read with no
runs, with N actors live, and once they are all passivated; then again for a second round of N runs,
because memory that Python frees is kept by its allocator for reuse rather than handed back: the first
round shows what N live actors cost, the second what passivated runs leave behind.

    .venv/bin/python bench/live_runs.py [-n 20000] [--idle-timeout 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import orjson
from machine import machine

from jetdag.actors.run import RunActor
from jetdag.actors.supervisor import Supervisor
from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import RUN_ID_HEADER, Client
from jetdag.engine.ids import new_run_id
from jetdag.engine.messages import MSG_ID
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.nats.server import NatsServer
from jetdag.engine.nats.setup import Topology, close, connect, ensure
from jetdag.engine.runtime import tune_gc

RESULTS = Path(__file__).parent / "results" / "live_runs.jsonl"
ENGINE_ID = "bench-live"
STATS = "bench.live_runs.stats"
SPEC = WorkflowSpec("bench_live", (TaskSpec("wait", "noop", queue="bench_nobody"),))
GIB = 2**30


# --- the engine process ---------------------------------------------------------------------------


async def child(url: str, idle_timeout: float, trace: bool) -> None:
    """The engine role until SIGTERM, answering STATS with what it holds (after a full collection).

    With `trace`, tracemalloc counts the bytes Python has allocated and not freed (slower, and its own
    bookkeeping inflates RSS: a run with it measures the heap, one without it the RSS)."""
    if trace:
        tracemalloc.start()
    tune_gc()  # as `jetdag engine` does
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with System(url, queues=[], engine_id=ENGINE_ID, idle_timeout=idle_timeout) as system:
        assert system.nc is not None

        async def stats(msg: Any) -> None:
            gc.collect()
            objects = gc.get_objects()
            live = sum(1 for o in objects if isinstance(o, RunActor) and not o.stopped)
            kept = sum(len(o.stats) for o in objects if isinstance(o, Supervisor))
            reply = {"live_actors": live, "supervisor_stats": kept, "tasks": len(asyncio.all_tasks()),
                     "gc_objects": len(objects), "blocks": sys.getallocatedblocks(),
                     "heap": tracemalloc.get_traced_memory()[0] if trace else None}  # fmt: skip
            await msg.respond(orjson.dumps(reply))

        await system.nc.subscribe(STATS, cb=stats)
        await stop.wait()


# --- the benchmark --------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_engine(url: str, args: argparse.Namespace, log: Path) -> subprocess.Popen[bytes]:
    """This file with --child: the engine role with the idle timeout under test."""
    command = [sys.executable, __file__, "--child", url, "--idle-timeout", str(args.idle_timeout)]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, *(["--trace"] if args.trace else [])],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def until(check: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(interval)


async def sample(nc: Any, pid: int) -> dict[str, Any]:
    """The engine's own counts (after gc.collect()) and then its RSS."""
    reply = orjson.loads((await nc.request(STATS, b"", timeout=60)).data)
    return {**reply, "rss": rss_bytes(pid)}


async def submit(nc: Any, js: Any, n: int) -> float:
    """Publish n submissions pipelined; seconds until the engine has created every one of those runs."""
    created: set[str] = set()
    runs: set[str] = set()
    everything = asyncio.Event()

    async def on_step(msg: Any) -> None:
        run = msgpack.unpackb(msg.data)["run"]
        if run in runs and run not in created:
            created.add(run)
            if len(created) == n:
                everything.set()

    sub = await nc.subscribe("jd.evt.*.*.step", cb=on_step)
    start = time.perf_counter()
    futures = []
    for _ in range(n):
        run_id = new_run_id()
        runs.add(run_id)
        headers = {MSG_ID: run_id, RUN_ID_HEADER: run_id}
        futures.append(await js.publish_async(S.submit_subject(SPEC.name), b"\x80", headers=headers))
    await asyncio.gather(*futures)
    try:
        await asyncio.wait_for(everything.wait(), 600)
    finally:
        await sub.unsubscribe()
    return time.perf_counter() - start


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as srv:
        nc = await connect(srv.url, "bench")
        js = nc.jetstream()
        await ensure(js, Topology())
        engine = start_engine(srv.url, args, Path(tmp) / "engine.log")
        try:
            leases = await js.key_value(S.LEASES_KV)

            async def owned() -> bool:
                try:
                    # >=: the bucket also holds the engine's roster key (engine.<id>)
                    return len(await leases.keys()) >= S.DEFAULT_PARTITIONS + 1
                except Exception:
                    return False

            await until(owned, 30, "the engine did not take the leases")
            async with await Client.connect(srv.url) as client:
                await client.apply(SPEC)
            await until(lambda: _answers(nc), 30, "the engine does not answer")
            baseline = await sample(nc, engine.pid)
            rounds = []
            for _ in range(args.rounds):
                took = await submit(nc, js, args.n)
                live = await sample(nc, engine.pid)
                started = time.perf_counter()

                async def passivated() -> bool:
                    return (await sample(nc, engine.pid))["live_actors"] == 0

                await until(passivated, args.idle_timeout + 300, "the actors were not passivated", interval=2.0)
                rounds.append({"submit_s": round(took, 2), "live": live, "passivated": await sample(nc, engine.pid),
                               "passivation_s": round(time.perf_counter() - started, 1)})  # fmt: skip
        finally:
            engine.terminate()
            try:
                engine.wait(30)
            except subprocess.TimeoutExpired:
                engine.kill()
                engine.wait(10)
            await close(nc)
    return summarize(args, baseline, rounds)


async def _answers(nc: Any) -> bool:
    try:
        await nc.request(STATS, b"", timeout=5)
    except Exception:
        return False
    return True


def summarize(args: argparse.Namespace, baseline: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes per live actor and per passivated run, from RSS or (with --trace) from the Python heap.

    A live actor costs round 1's RSS growth over the baseline (or the last round's heap growth over the
    round before, every actor of a round live at once; with tracemalloc the first round is slow enough
    that some actors can passivate before the last run is created). A passivated run costs the growth from round
    1's passivated sample to the last one: structures sized by the peak number of live actors (dicts
    do not shrink) and memory the allocator keeps are there after round 1 and are reused by round 2,
    so only what passivated runs keep for good shows. `held_after_passivation` is round 1's remainder.
    """
    n, first, last = args.n, rounds[0], rounds[-1]
    key = "heap" if args.trace else "rss"
    record: dict[str, Any] = {
        "bench": "live_runs",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs_per_round": n,
        "rounds": len(rounds),
        "idle_timeout_s": args.idle_timeout,
        "measure": key,
        "baseline": baseline,
        "samples": rounds,
    }
    if args.trace:  # exact: the last round, from what the round before it left
        before = rounds[-2]["passivated"] if len(rounds) > 1 else baseline
        live = (last["live"][key] - before[key]) / last["live"]["live_actors"]
    else:  # round 1: later rounds partly reuse memory the allocator kept
        live = (first["live"][key] - baseline[key]) / first["live"]["live_actors"]
    kept = (last["passivated"][key] - first["passivated"][key]) / (n * (len(rounds) - 1)) if len(rounds) > 1 else None
    record.update(
        bytes_per_live_actor=round(live),
        bytes_per_passivated_run=None if kept is None else round(kept),
        held_after_passivation=first["passivated"][key] - baseline[key],
        live_actors_per_gib=round(GIB / live),
        passivated_runs_per_gib=None if kept is None or kept <= 0 else round(GIB / kept),
        machine=machine(),
    )
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20_000, help="runs per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of n runs (default 2)")
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="run actors' idle timeout (default 60 s)")
    parser.add_argument("--trace", action="store_true", help="measure the Python heap with tracemalloc, not RSS")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the record as JSON only")
    parser.add_argument("--no-save", action="store_true", help=f"do not append to {RESULTS}")
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.idle_timeout, args.trace))
        sys.exit(0)
    record = asyncio.run(main(args))
    if not args.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("ab") as f:
            f.write(orjson.dumps(record) + b"\n")
    if args.json:
        print(orjson.dumps(record).decode())
    else:
        m, mib, what = record["machine"], 2**20, record["measure"]
        print(f"live runs: {args.rounds} rounds of {args.n} one-task runs whose task stays queued; engine {what} "
              f"(idle timeout {args.idle_timeout:g}s)")  # fmt: skip
        print(f"  {'':<24} {'RSS MiB':>8} {'heap MiB':>9} {'live actors':>12} {'gc objects':>11}")
        rows = [("no runs", record["baseline"])]
        for i, r in enumerate(record["samples"], 1):
            rows += [(f"round {i}: {r['live']['live_actors']} live", r["live"]),
                     (f"round {i}: passivated", r["passivated"])]  # fmt: skip
        for label, s in rows:
            heap = f"{s['heap'] / mib:>9.1f}" if s["heap"] is not None else f"{'-':>9}"
            print(f"  {label:<24} {s['rss'] / mib:>8.1f} {heap} {s['live_actors']:>12} {s['gc_objects']:>11}")
        print(f"  per live actor: {record['bytes_per_live_actor']} B ({what}); "
              f"{record['live_actors_per_gib']} live actors per GiB")  # fmt: skip
        print(f"  per passivated run: {record['bytes_per_passivated_run']} B ({what}, growth from round 1 on); "
              f"{record['passivated_runs_per_gib']} passivated runs per GiB; after round 1's passivation "
              f"{record['held_after_passivation'] / mib:.1f} MiB above no runs")  # fmt: skip
        print(f"  on {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Python {m['python']}, {m['nats_server']}")
