"""`kill -9` of the engine: runs survive it, nothing is lost or done twice, and another engine takes over.

Engines run as `jetdag engine` subprocesses against the test's nats-server; the worker runs in this
process with the handlers of tests/e2e/effects.py, which record every execution in a file. The
record is the effect the engine promises to produce exactly once per dispatched attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from jetdag.actors import partition, run
from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import NotFound
from jetdag.engine.events import RunSubmitted, TaskSucceeded
from jetdag.engine.messages import decode_event
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from jetdag.engine.nats.setup import Topology
from jetdag.engine.run import EARLY_RETRY, decide
from jetdag.engine.state import new_run
from tests.e2e.effects import read_lines, unit
from tests.e2e.up_process import JETDAG, clean_env
from tests.helpers import eventually, run_inputs

REPO = Path(__file__).resolve().parents[2]
LEASE_TTL = Topology().lease_ttl


def chain(name: str, steps: int, payload: dict[str, Any] | None) -> WorkflowSpec:
    tasks = tuple(
        TaskSpec(f"s{i}", "t_effect", payload=payload, depends_on=(f"s{i - 1}",) if i else ()) for i in range(steps)
    )
    return WorkflowSpec(name, tasks, retry=RetryPolicy(max_attempts=3, initial_delay=0.2, jitter=0.0))


class Engines:
    """`jetdag engine` subprocesses, each logging to its own file; every one is killed when the test ends."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url, self.logs = url, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, engine_id: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"engine-{engine_id}-{len(self.procs)}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [JETDAG, "--log-level", "info", "engine", "--nats", self.url, "--engine-id", engine_id],
                cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill9(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def log_text(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.logs.glob("*.log"))
        )


async def lease_holders(js: JetStreamContext) -> dict[int, tuple[str, int]]:
    """partition -> (engine id, revision) for every partition whose lease is held."""
    kv = await js.key_value(S.LEASES_KV)
    out: dict[int, tuple[str, int]] = {}
    for p in range(S.DEFAULT_PARTITIONS):
        with contextlib.suppress(KeyNotFoundError):
            entry = await kv.get(S.lease_key(p))
            if entry.value:
                out[p] = (entry.value.decode(), entry.revision or 0)
    return out


async def finished(client: Client, run_id: str) -> bool:
    try:
        return (await client.status(run_id))["status"] in ("succeeded", "failed", "cancelled")
    except NotFound:
        return False


async def wait_all(client: Client, run_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Each run's final view; fails naming the runs that have not finished within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    views: dict[str, dict[str, Any]] = {}
    for run_id in run_ids:
        try:
            views[run_id] = await client.wait(run_id, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            late = [r for r in run_ids if r not in views and not await finished(client, r)]
            pytest.fail(f"{len(late)} of {len(run_ids)} runs unfinished after {timeout}s, e.g. {late[:3]}")
    return views


def check_exactly_once(lines: list[dict[str, Any]], views: dict[str, dict[str, Any]], retry_one_in: int) -> int:
    """Every task of every run: one execution per dispatched attempt, the last one succeeded, as KV says.

    Returns the number of executions checked.
    """
    for run_id, view in views.items():
        assert view["status"] == "succeeded", f"{run_id}: {view}"
    twice = [d for d, n in Counter(line["dispatch"] for line in lines).items() if n > 1]
    assert not twice, f"{len(twice)} attempts executed more than once, e.g. {twice[:5]}"
    by_task: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        by_task[(line["run"], line["task"])].append(line)
    expected = {(run_id, task) for run_id, view in views.items() for task in view["tasks"]}
    assert set(by_task) == expected, f"executions of unknown tasks or tasks never executed: {set(by_task) ^ expected}"
    for (run_id, task), execs in by_task.items():
        execs.sort(key=lambda e: e["attempt"])
        attempts = [e["attempt"] for e in execs]
        assert attempts == list(range(1, len(execs) + 1)), (run_id, task, attempts)
        outcomes = [e["outcome"] for e in execs]
        assert outcomes == ["retry"] * (len(execs) - 1) + ["ok"], (run_id, task, outcomes)
        asked_retry = retry_one_in > 0 and unit(run_id, task) * retry_one_in < 1
        assert len(execs) == (2 if asked_retry else 1), (run_id, task, attempts)
        state = views[run_id]["tasks"][task]
        assert (state["status"], state["attempts"]) == ("succeeded", len(execs)), (run_id, task, state)
        assert state["result"] == {"dispatch": execs[-1]["dispatch"]}, (run_id, task, state)
    return len(lines)


# --- what the chaos below found: the two clocks an event held by a killed engine depends on -------


def test_the_events_a_dead_engine_held_come_back_before_a_run_gives_up_on_them() -> None:
    """A result can overtake the redelivery of the event that dispatched it (held by the killed engine, unacked):
    the run defers the result, and drops it after MAX_EARLY_DELIVERIES deferrals. The held event must come
    back (AckWait) well before that, and a takeover must not wait for it longer than for the lease."""
    gives_up_after = run.MAX_EARLY_DELIVERIES * EARLY_RETRY
    assert gives_up_after >= partition.ACK_WAIT * 2, (partition.ACK_WAIT, gives_up_after)
    assert partition.ACK_WAIT <= LEASE_TTL


def test_a_result_ahead_of_its_dispatch_is_looked_at_again_after_early_retry_from_now() -> None:
    """Not from the result's own timestamp: a result older than EARLY_RETRY (any result that waited for a
    restarted engine) came back at once, 50 times within a second, and was dropped."""
    spec = chain("early", 2, None)
    state = new_run("R", spec.name, 1, spec, {}, 0.0)
    decide(state, RunSubmitted("R", spec.name, 1, {}, 0.0), now=1.0)
    early = decide(state, TaskSucceeded("R", "s1", 1, 2.0, "w", None), now=100.0)
    assert early.defer_until == 100.0 + EARLY_RETRY, early


@pytest.mark.chaos
@pytest.mark.timeout(90)
async def test_engine_kill_9_three_times_loses_and_duplicates_nothing(nats_url: str, tmp_path: Path) -> None:
    rng = random.Random(4)
    effects = tmp_path / "effects.jsonl"
    retry_one_in = 8
    spec = chain(
        "t_engine_chaos",
        5,
        {"log": str(effects), "sleep": 0.02, "jitter": 0.1, "retry_one_in": retry_one_in, "retry_delay": 0.3},
    )
    engines = Engines(nats_url, tmp_path)
    engine = engines.start("chaos-engine")
    run_ids: list[str] = []
    at_kill: list[int] = []
    try:
        async with System(nats_url, engine=False, concurrency=256), await Client.connect(nats_url) as client:
            await client.apply(spec)

            async def owned() -> bool:
                holders = await lease_holders(client.js)
                return len(holders) == S.DEFAULT_PARTITIONS and {h for h, _ in holders.values()} == {"chaos-engine"}

            await eventually(owned, timeout=20, interval=0.05)
            for wave in range(3):
                run_ids += [await client.submit(spec.name) for _ in range(200 // 3 + (wave == 0) * (200 % 3))]
                await asyncio.sleep(rng.uniform(0.3, 1.2))  # the fault's moment, not a synchronisation
                at_kill.append(len(read_lines(effects)))
                engines.kill9(engine)
                engine = engines.start("chaos-engine")  # the same id: it takes its own leases back at once
            views = await wait_all(client, run_ids, timeout=60)
    except BaseException:
        print(engines.log_text())
        raise
    finally:
        engines.stop_all()
    assert len(run_ids) == 200
    lines = read_lines(effects)
    # Each kill hit the engine in the middle of work, not after it was done.
    assert all(n < len(lines) for n in at_kill), (at_kill, len(lines))
    assert check_exactly_once(lines, views, retry_one_in) >= 200 * 5


@pytest.mark.chaos
@pytest.mark.timeout(60)
async def test_a_killed_engines_runs_finish_on_the_other_within_the_lease_ttl(nats_url: str, tmp_path: Path) -> None:
    rng = random.Random(11)
    effects = tmp_path / "effects.jsonl"
    sleep, jitter = 1.0, 1.0  # each task takes 1-2 s: the runs are in flight when the engine dies
    spec = chain("t_engine_takeover", 2, {"log": str(effects), "sleep": sleep, "jitter": jitter})
    engines = Engines(nats_url, tmp_path)
    try:
        async with System(nats_url, engine=False, concurrency=256), await Client.connect(nats_url) as client:
            # Two engines split the partitions 8/8, but one that starts first takes all 16 and hands
            # eight over one per round (16 s at the default TTL; tests/actors/test_balance.py): the split
            # is set up the way a restart finds it instead, each engine's leases already under its id.
            kv = await client.js.key_value(S.LEASES_KV)
            seeded = {p: await kv.create(S.lease_key(p), b"eng-a" if p % 2 else b"eng-b") for p in range(16)}
            victim, survivor = engines.start("eng-a"), engines.start("eng-b")

            async def split() -> dict[int, tuple[str, int]]:
                holders = await lease_holders(client.js)
                assert len(holders) == S.DEFAULT_PARTITIONS, holders
                assert all(rev > seeded[p] for p, (_, rev) in holders.items()), "an engine has not taken its leases"
                return holders

            holders: dict[int, tuple[str, int]] = await eventually(split, timeout=LEASE_TTL - 1, interval=0.05)
            assert Counter(h for h, _ in holders.values()) == {"eng-a": 8, "eng-b": 8}, holders
            await client.apply(spec)
            run_ids = [await client.submit(spec.name) for _ in range(40)]
            on_victim = [r for r in run_ids if holders[S.partition_of(r)][0] == "eng-a"]
            assert on_victim and len(on_victim) < len(run_ids)

            await eventually(lambda: _first_tasks_running(client, run_ids), timeout=10, interval=0.05)
            await asyncio.sleep(rng.uniform(0.0, 0.8))  # the fault's moment, not a synchronisation
            killed_at = time.monotonic()
            engines.kill9(victim)
            finished: dict[str, float] = {}

            async def finish(run_id: str) -> None:
                view = await client.wait(run_id, timeout=30)
                assert view["status"] == "succeeded", view
                finished[run_id] = time.monotonic() - killed_at

            await asyncio.gather(*(finish(r) for r in run_ids))
            views = {r: await client.status(r) for r in run_ids}

            async def survivor_holds_all() -> bool:
                holders = await lease_holders(client.js)
                return len(holders) == S.DEFAULT_PARTITIONS and {h for h, _ in holders.values()} == {"eng-b"}

            await eventually(survivor_holds_all, timeout=LEASE_TTL)
            assert survivor.poll() is None, "the surviving engine died"
    except BaseException:
        print(engines.log_text())
        raise
    finally:
        engines.stop_all()
    work_left = 2 * (sleep + jitter)  # at most the rest of s0 and all of s1
    took = max(finished[r] for r in on_victim)
    # The survivor looks at free leases every TTL/3; the margin covers starting the partitions and the steps.
    budget = LEASE_TTL + LEASE_TTL / 3 + work_left + 2.0
    print(f"takeover: the killed engine's {len(on_victim)} runs finished {took:.2f}s after the kill (budget {budget}s)")
    assert took < budget, f"runs of the killed engine took {took:.2f}s after the kill (budget {budget:.1f}s)"
    own = max(finished[r] for r in run_ids if r not in on_victim)
    assert own < work_left + 2.0, f"the survivor's own runs were held up: {own:.2f}s"
    check_exactly_once(read_lines(effects), views, retry_one_in=0)


@pytest.mark.chaos
@pytest.mark.timeout(60)
async def test_the_events_a_killed_engine_held_come_back_to_its_restart_at_once(nats_url: str, tmp_path: Path) -> None:
    """Results delivered to an engine that dies before acking them: restarted with the same id, it rewinds its
    partitions' consumers (engine/nats/rewind.py) and the runs go on at once, not after AckWait."""
    spec = WorkflowSpec(
        "t_engine_rewind",
        tuple(
            TaskSpec(f"s{i}", "sleep", payload={"seconds": 0.3}, depends_on=(f"s{i - 1}",) if i else ())
            for i in range(2)
        ),
    )
    engines = Engines(nats_url, tmp_path)
    engine = engines.start("rewind-engine")
    try:
        async with System(nats_url, engine=False, concurrency=64), await Client.connect(nats_url) as client:
            js = client.js
            await client.apply(spec)

            async def owned(since: dict[int, tuple[str, int]]) -> bool:
                holders = await lease_holders(js)
                return len(holders) == S.DEFAULT_PARTITIONS and all(
                    h == "rewind-engine" and rev > since.get(p, ("", 0))[1] for p, (h, rev) in holders.items()
                )

            await eventually(lambda: owned({}), timeout=20, interval=0.05)
            run_ids = [await client.submit(spec.name) for _ in range(20)]

            await eventually(lambda: _first_tasks_running(client, run_ids), timeout=10)
            engine.send_signal(signal.SIGSTOP)  # frozen with its pulls outstanding: results reach it, no acks leave
            stopped_at = time.monotonic()

            async def results_held() -> bool:
                for r in run_ids:
                    inputs = [decode_event(m.subject or "", m.data or b"") for m in await run_inputs(js, r)]
                    if not any(isinstance(e, TaskSucceeded) for e in inputs):
                        return False
                infos = [await js.consumer_info(S.EVENTS, S.partition_consumer(p)) for p in range(S.DEFAULT_PARTITIONS)]
                # Every s0 result is in, each delivered (to the frozen engine) and none acked.
                return all(i.num_pending == 0 for i in infos) and sum(i.num_ack_pending or 0 for i in infos) >= len(
                    run_ids
                )

            await eventually(results_held, timeout=5)
            engines.kill9(engine)
            before = await lease_holders(js)
            engine = engines.start("rewind-engine")  # takes its own leases back at once
            await eventually(lambda: owned(before), timeout=15, interval=0.02)
            owned_at = time.monotonic()

            async def s0_done() -> bool:
                views = [await client.status(r) for r in run_ids]
                return all(v["tasks"]["s0"]["status"] == "succeeded" for v in views)

            await eventually(s0_done, timeout=3.0, interval=0.02)
            progressed_at = time.monotonic()
            views = await wait_all(client, run_ids, timeout=20)
    except BaseException:
        print(engines.log_text())
        raise
    finally:
        engines.stop_all()
    print(
        f"rewind: runs went on {progressed_at - owned_at:.2f}s after the restart owned its partitions, "
        f"{progressed_at - stopped_at:.2f}s after the results reached the frozen engine (AckWait {partition.ACK_WAIT}s)"
    )
    # Not AckWait's doing: the held results were delivered after the freeze, so it could resend them only later.
    assert progressed_at - stopped_at < partition.ACK_WAIT
    assert all(v["status"] == "succeeded" for v in views.values()), views
    restarted = (tmp_path / f"engine-rewind-engine-{len(engines.procs) - 1}.log").read_text()
    assert "rewound" in restarted, restarted[-3000:]


async def _first_tasks_running(client: Client, run_ids: list[str]) -> bool:
    """Whether every run exists and its first task (s0) runs."""
    try:
        views = [await client.status(r) for r in run_ids]
    except NotFound:
        return False  # not created yet
    return all(v["tasks"]["s0"]["status"] == "running" for v in views)
