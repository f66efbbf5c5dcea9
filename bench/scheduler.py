"""Scheduler load: thousands of cron schedules firing on one engine, or on three while one is killed.

nats-server, E x `jetdag engine` and `--workers` x `jetdag worker` as separate processes. `--minutely`
workflows with `* * * * *` and `--secondly` ones with `* * * * * *` (seconds first) are applied, each one
no-op task. For `--minutes` minutes, every run submission the engines publish (`jd.evt.<p>.<run>`, seen
on a core subscription as it passes) is timestamped on arrival: its lag is that time minus the tick it
fires (the run's logical time). Each tick of the window must start exactly one run: a tick without one is
missed, and one with two run ids (impossible by construction: ids derive from the tick) would be doubled.
Two engines publishing one tick's submission is counted too (`double_publishes`): JetStream drops the
second, and it shows how often the backups stepped in.

With `--engines 3 --kill`, one engine is killed with `kill -9` `--kill-at` seconds into the window,
before a minute's tick: the others fire its schedules as backups, BACKUP_DELAY (0.5 s) late.

    jetdag bench scheduler [--minutely 10000] [--secondly 100] [--minutes 3] [--engines 1] [--kill]
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from collections import defaultdict
from typing import Any

import harness
import msgpack
from harness import Stack, percentile, until
from nats.js.api import DeliverPolicy

from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, Trigger, WorkflowSpec


class Fires:
    """Every run submission of the window: (workflow, tick) -> run ids, and its lag: when JetStream stored it
    (the message's timestamp) minus the tick. Read from JD_EVENTS once the window is over, so the benchmark's
    own share of the CPU during the bursts cannot skew it."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.runs: dict[tuple[str, float], set[str]] = defaultdict(set)
        self.lag: dict[tuple[str, float], float] = {}
        self.publishes = 0
        """Submissions seen on the wire (a core subscription): more than runs when two engines sent one tick."""
        self.sent: dict[tuple[str, float], int] = defaultdict(int)

    async def on_msg(self, msg: Any) -> None:
        if b"run.submitted" not in msg.data:
            return
        body = msgpack.unpackb(msg.data)
        if self.start <= body["logical_time"] < self.end:
            self.publishes += 1
            self.sent[(body["workflow"], body["logical_time"])] += 1

    def take(self, data: bytes, stored: float) -> None:
        body = msgpack.unpackb(data)
        if body.get("k") != "run.submitted":
            return
        tick = body["logical_time"]
        if self.start <= tick < self.end:
            key = (body["workflow"], tick)
            self.runs[key].add(body["run"])
            self.lag.setdefault(key, stored - tick)

    async def read(self, js: Any) -> None:
        """Every submission stored in JD_EVENTS (an ordered consumer of the runs' own subjects)."""
        sub = await js.subscribe("jd.evt.*.*", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=5)
                except TimeoutError:
                    return
                self.take(msg.data, msg.metadata.timestamp.timestamp())
                if msg.metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()


def specs(minutely: int, secondly: int) -> list[WorkflowSpec]:
    task = (TaskSpec("a", "noop"),)
    out = [WorkflowSpec(f"bench_min_{i}", task, triggers=(Trigger(cron="* * * * *"),)) for i in range(minutely)]
    out += [WorkflowSpec(f"bench_sec_{i}", task, triggers=(Trigger(cron="* * * * * *"),)) for i in range(secondly)]
    return out


def expected(names: list[str], start: float, end: float) -> set[tuple[str, float]]:
    """Every (workflow, tick) of the window [start, end)."""
    minutes = [float(m) for m in range(math.ceil(start / 60) * 60, math.ceil(end / 60) * 60, 60) if m < end]
    seconds = [float(s) for s in range(math.ceil(start), math.ceil(end))]
    out = set()
    for name in names:
        for tick in minutes if name.startswith("bench_min_") else seconds:
            out.add((name, tick))
    return out


def by_minute(fires: Fires) -> list[dict[str, Any]]:
    """Each minute's tick of the minutely schedules: its lags and how many of its fires went out twice."""
    ticks: dict[float, list[float]] = defaultdict(list)
    for (workflow, tick), lag in fires.lag.items():
        if workflow.startswith("bench_min_"):
            ticks[tick].append(lag)
    return [
        {"at_s": round(tick - fires.start), "lag_p50_ms": harness.ms(percentile(lags, 50)),
         "lag_p99_ms": harness.ms(percentile(lags, 99)),
         "sent_twice": sum(1 for (w, t), n in fires.sent.items() if t == tick and n > 1 and w.startswith("bench_min_"))}
        for tick, lags in sorted(ticks.items())
    ]  # fmt: skip


def missed_seconds(fires: Fires, names: list[str]) -> dict[str, int]:
    """Seconds into the window at which some every-second schedule's tick was missed: how many."""
    want = {k for k in expected(names, fires.start, fires.end) if k[0].startswith("bench_sec_")}
    out: dict[int, int] = defaultdict(int)
    for _, tick in want - fires.lag.keys():
        out[round(tick - fires.start)] += 1
    return {str(at): n for at, n in sorted(out.items())}


def summary(fires: Fires, names: list[str], kind: str) -> dict[str, Any]:
    want = {k for k in expected(names, fires.start, fires.end) if k[0].startswith(f"bench_{kind}_")}
    lags = [fires.lag[k] for k in want if k in fires.lag]
    return {
        f"{kind}_ticks": len(want),
        f"{kind}_missed": len(want - fires.lag.keys()),
        f"{kind}_doubled": sum(1 for k in want if len(fires.runs.get(k, ())) > 1),
        f"{kind}_lag_p50_ms": harness.ms(percentile(lags, 50)) if lags else None,
        f"{kind}_lag_p99_ms": harness.ms(percentile(lags, 99)) if lags else None,
        f"{kind}_lag_max_ms": harness.ms(max(lags)) if lags else None,
        f"{kind}_within_1s": round(sum(1 for lag in lags if lag <= 1.0) / len(want), 4) if want else None,
    }


async def main(args: Any) -> dict[str, Any]:
    workflows = specs(args.minutely, args.secondly)
    names = [w.name for w in workflows]
    async with Stack() as s:
        engines = [s.engine(f"engine{i}", engine_id=f"bench-{i}") for i in range(args.engines)]
        s.workers(args.workers, args.concurrency)
        await s.wait_ready(args.workers)
        async with await Client.connect(s.url) as client:
            applied = time.monotonic()
            for start in range(0, len(workflows), 500):
                await asyncio.gather(*(client.apply(w) for w in workflows[start : start + 500]))
            apply_s = time.monotonic() - applied
        # The window starts at the next minute, once every engine has had time to see every schedule.
        start = math.ceil((time.time() + args.settle) / 60) * 60
        end = start + args.minutes * 60
        fires = Fires(start, end)
        await s.nc.subscribe("jd.evt.*.*", cb=fires.on_msg)
        await s.nc.flush()
        killed_at = None
        if args.kill:
            victim = engines[0]
            await until(lambda: _after(start + args.kill_at), end - time.time() + 60, "never")
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.time() - start
            del s.procs["engine0"]
        await until(lambda: _after(end + args.drain), end - time.time() + args.drain + 60, "never")
        s.check_alive()
        await fires.read(s.js)
    rec = harness.record(
        "scheduler", minutely=args.minutely, secondly=args.secondly, minutes=args.minutes, engines=args.engines,
        killed_at_s=round(killed_at, 1) if killed_at is not None else None, apply_s=round(apply_s, 1),
        **summary(fires, names, "min"), **summary(fires, names, "sec"),
        double_publishes=max(0, fires.publishes - sum(len(r) for r in fires.runs.values())),
        minutes_detail=by_minute(fires), sec_missed_at_s=missed_seconds(fires, names),
    )  # fmt: skip
    return rec


async def _after(moment: float) -> bool:
    return time.time() >= moment


def cli() -> None:
    p = harness.parser(__doc__, "scheduler")
    p.add_argument("--minutely", type=int, default=10_000, help="workflows firing every minute (default 10000)")
    p.add_argument("--secondly", type=int, default=100, help="workflows firing every second (default 100)")
    p.add_argument("--minutes", type=int, default=3, help="minutes measured (default 3)")
    p.add_argument("--engines", type=int, default=1, help="engine processes (default 1)")
    p.add_argument("--kill", action="store_true", help="kill -9 one engine during the window (needs --engines >= 2)")
    p.add_argument("--kill-at", type=float, default=55.0, help="seconds into the window to kill it (default 55)")
    p.add_argument("--settle", type=float, default=30.0, help="seconds at least between apply and the window")
    p.add_argument("--drain", type=float, default=5.0, help="seconds after the window for late fires (default 5)")
    harness.add_workers(p)
    args = p.parse_args()
    if args.kill and args.engines < 2:
        p.error("--kill needs --engines 2 or more")
    rec = harness.run(main(args))
    rows = [
        (kind, rec[f"{kind}_ticks"], rec[f"{kind}_missed"], rec[f"{kind}_doubled"], rec[f"{kind}_lag_p50_ms"],
         rec[f"{kind}_lag_p99_ms"], rec[f"{kind}_lag_max_ms"], rec[f"{kind}_within_1s"])
        for kind in ("min", "sec")
    ]  # fmt: skip
    title = (
        f"scheduler: {args.minutely:,} minutely + {args.secondly:,} secondly schedules, {args.minutes} min, "
        f"{args.engines} engine(s){', one killed at ' + str(rec['killed_at_s']) + ' s' if args.kill else ''}; "
        f"{rec['double_publishes']} double publishes"
    )
    columns = ("schedules", "ticks", "missed", "doubled", "lag p50 ms", "lag p99 ms", "lag max ms", "within 1 s")
    harness.finish(args, rec, title, columns, rows)
    if rec["min_missed"] or rec["sec_missed"] or rec["min_doubled"] or rec["sec_doubled"]:
        sys.exit(1)


if __name__ == "__main__":
    cli()
