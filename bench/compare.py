"""Side by side: one workload on jetdag and on peers (Celery + Redis, taskiq + NATS, Prefect), in turn.

Each round runs jetdag's workload (`python bench/<workload>.py --json --no-save`, its own stack), then
each peer on a stack of its own started here and stopped after it: Celery 5 with Redis as broker and
result backend (redis-server on a free port, no persistence) and one worker `--pool prefork
--concurrency 2`; taskiq with taskiq-nats (PullBasedJetStreamBroker, results in a JetStream object
store) on a nats-server with JetStream and `taskiq worker --workers 2`; Prefect 3 on a local `prefect
server` (its tasks run in the flow's process). jetdag runs A B C A B C…, `--rounds` times (2), and the
table shows each system's median over the rounds and the ratio jetdag/peer.

Figures: throughput tasks/s (N no-op tasks at once, all results awaited); chain ms per step (a run of
a N-step chain / N, median of --reps runs); fanout seconds from submit to join done (root -> N -> join,
median of --reps runs); runs runs/s (N runs of a 3-task chain at once). Prefect runs throughput at
--prefect-n tasks (1000) and does not run `runs`.

Peers are installed on first use into bench/peers/<peer>/.venv from the pinned
bench/compare/requirements-<peer>.txt (never into jetdag's environment); Celery needs Debian's
redis-server (apt-get install redis-server). Their code: bench/compare/<peer>_peer.py.

    jetdag bench compare throughput [--peers celery taskiq prefect] [--rounds 2] [-n 5000]
    jetdag bench compare chain [-n 100] [--reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import harness
import orjson

from jetdag.engine.nats.server import NatsServer

BENCH = Path(__file__).resolve().parent
CODE = BENCH / "compare"
PEERS_DIR = BENCH / "peers"
PEERS = ("celery", "taskiq", "prefect")
REDIS_INSTALL = "apt-get install -y --no-install-recommends redis-server (as root)"


class Workload:
    def __init__(self, n: int, figure: str, unit: str, higher: bool, describe: str) -> None:
        self.n, self.figure, self.unit, self.higher, self.describe = n, figure, unit, higher, describe


WORKLOADS = {
    "throughput": Workload(5000, "tasks_per_s", "tasks/s", True, "{n:,} no-op tasks at once, every result awaited"),
    "chain": Workload(100, "step_ms", "ms per step", False, "a {n}-step chain of noops, run total / {n}"),
    "fanout": Workload(500, "p50_s", "s per run", False, "root -> {n:,} noops -> join, submit to join done"),
    "runs": Workload(500, "runs_per_s", "runs/s", True, "{n:,} runs of a 3-task noop chain at once"),
}
SKIPS = {("prefect", "runs"): "not run: concurrent small runs need deployments and workers"}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` stops what it started."""


def _on_sigterm(*_: Any) -> None:
    raise Terminated


def _die_with_parent() -> None:
    # Between fork and exec: Linux kills the child if this process dies without tearing down (kill -9).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    """A temp dir and the processes started in it, each in a session of its own (so its children too: a
    prefork pool, taskiq's worker processes, the server's), every one stopped on the way out."""

    def __init__(self, name: str) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix=f"jetdag-compare-{name}-")
        self.dir = Path(self.tmp.name)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.nats: NatsServer | None = None

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, t: type[BaseException] | None, *_: Any) -> None:
        try:
            self.stop()
            if t is not None and not issubclass(t, KeyboardInterrupt | Terminated):
                self.print_logs()
        finally:
            if self.nats is not None:
                self.nats.stop()
            self.tmp.cleanup()

    def spawn(self, name: str, argv: Sequence[str | Path], env: dict[str, str], cwd: Path = CODE) -> None:
        with (self.dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [str(a) for a in argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to each process group, wait, SIGKILL to what is left of each group (stragglers too)."""
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def print_logs(self, lines: int = 15) -> None:
        for name in self.procs:
            with contextlib.suppress(OSError):
                tail = (self.dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    print(f"--- {name}.log (last {len(tail)} lines)", *tail, sep="\n", file=sys.stderr)


def run_child(argv: Sequence[str | Path], timeout: float, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run a measuring process (in our process group: a Ctrl-C reaches it too); its stdout and stderr."""
    proc = subprocess.Popen(
        [str(a) for a in argv],
        cwd=CODE,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{Path(str(argv[1])).name} took over {timeout:g} s") from None
    finally:
        if proc.poll() is None:  # a timeout, Ctrl-C or SIGTERM: let it tear down what it started, then go
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text, errors = out.decode(errors="replace"), err.decode(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(errors.strip().splitlines()[-15:])
        raise RuntimeError(f"{Path(str(argv[1])).name} exited with {proc.returncode}:\n{tail}")
    return text, errors


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            rec = orjson.loads(line)
            assert isinstance(rec, dict)
            return rec
    raise RuntimeError(f"no JSON line in the output: {text[-500:]!r}")


# --- the peers' environments


def venv_python(peer: str) -> Path:
    """The peer's interpreter, its venv made (or remade) from the pinned requirements when they changed."""
    venv = PEERS_DIR / peer / ".venv"
    python = venv / "bin" / "python"
    req = CODE / f"requirements-{peer}.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = venv / "jetdag-requirements.sha256"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    print(f"installing the {peer} peer into {venv} from {req.relative_to(BENCH.parent)} …", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for step in ([sys.executable, "-m", "venv", str(venv)], [*pip, "-r", str(req)]):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"installing the {peer} peer failed ({' '.join(step[:4])} …):\n{done.stderr[-3000:]}")
    stamp.write_text(digest + "\n")
    return python


def peer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def redis_server() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else "")
    if not found:
        raise SystemExit(f"error: the celery peer needs redis-server, not found: {REDIS_INSTALL}, or leave celery out")
    return found


def wait_until(check: Any, procs: Procs, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:g} s")


def peer_args(args: argparse.Namespace, n: int) -> list[str]:
    warmup = 50 if args.workload == "runs" else 1
    return [args.workload, "-n", str(n), "--reps", str(args.reps), "--warmup", str(warmup)]


@contextlib.contextmanager
def celery_stack(python: Path) -> Iterator[dict[str, str]]:
    with Procs("celery") as procs:
        port = free_port()
        listen = ["--port", str(port), "--bind", "127.0.0.1", "--dir", procs.dir]
        procs.spawn("redis", [redis_server(), *listen, "--save", "", "--appendonly", "no"], peer_env())
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() is None, procs, 15, "redis")
        env = peer_env(BENCH_REDIS_URL=f"redis://127.0.0.1:{port}/0")
        celery = python.parent / "celery"
        worker = ["-A", "celery_peer", "worker", "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING"]
        procs.spawn("worker", [celery, *worker], env=env)
        yield env  # the runner waits for the worker (ping)
        procs.check_alive()


@contextlib.contextmanager
def taskiq_stack(python: Path, batch: int) -> Iterator[dict[str, str]]:
    with Procs("taskiq") as procs:
        procs.nats = NatsServer(procs.dir / "nats")
        url = procs.nats.start()
        env = peer_env(BENCH_NATS_URL=url, BENCH_TASKIQ_BATCH=str(batch))
        taskiq = python.parent / "taskiq"
        procs.spawn("worker", [taskiq, "worker", "taskiq_peer:broker", "--workers", "2", "--log-level", "WARNING"], env)
        yield env  # the runner's warm-up waits for the workers
        procs.check_alive()


@contextlib.contextmanager
def prefect_stack(python: Path) -> Iterator[dict[str, str]]:
    with Procs("prefect") as procs:
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = peer_env(
            PREFECT_HOME=str(procs.dir / "home"),
            PREFECT_API_URL=api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
        )
        prefect = python.parent / "prefect"
        procs.spawn("server", [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env)

        def healthy() -> bool:
            with urllib.request.urlopen(f"{api}/health", timeout=1) as r:
                return bool(r.status == 200)

        wait_until(healthy, procs, 120, "prefect server")
        yield env
        procs.check_alive()


def run_peer(peer: str, args: argparse.Namespace) -> dict[str, Any]:
    python = venv_python(peer)
    n = args.prefect_n if peer == "prefect" and args.workload == "throughput" else args.n
    stack = {
        "celery": lambda: celery_stack(python),
        "taskiq": lambda: taskiq_stack(python, args.taskiq_batch),
        "prefect": lambda: prefect_stack(python),
    }[peer]()
    with stack as env:
        start = time.perf_counter()
        out, _ = run_child([python, CODE / f"{peer}_peer.py", *peer_args(args, n)], args.timeout, env)
        took = time.perf_counter() - start
    return {**last_json(out), "n": n, "process_s": round(took, 1)}


def run_jetdag(args: argparse.Namespace) -> dict[str, Any]:
    n, reps = str(args.n), str(args.reps)
    extra = {
        "throughput": ["-n", n],
        "chain": ["--steps", n, "--runs", reps, "--warmup", "1"],
        "fanout": ["--width", n, "--reps", reps, "--warmup", "1"],
        "runs": ["-n", n, "--warmup", "50"],
    }[args.workload]
    start = time.perf_counter()
    out, _ = run_child([sys.executable, BENCH / f"{args.workload}.py", *extra, "--json", "--no-save"], args.timeout)
    rec = last_json(out)
    if args.workload == "chain":
        rec["step_ms"] = round(rec["run_p50_s"] * 1000 / args.n, 2)
    for key in ("bench", "when", "machine"):
        rec.pop(key, None)
    return {**rec, "n": args.n, "process_s": round(time.perf_counter() - start, 1)}


def jetdag_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("jetdag")


# --- the comparison


def measure(args: argparse.Namespace) -> dict[str, Any]:
    wl = WORKLOADS[args.workload]
    systems: dict[str, dict[str, Any]] = {"jetdag": {"rounds": []}}
    for peer in args.peers:
        systems[peer] = {"rounds": []}
        if (peer, args.workload) in SKIPS:
            systems[peer]["skipped"] = SKIPS[(peer, args.workload)]
    for r in range(args.rounds):
        for name, entry in systems.items():
            if "skipped" in entry or "error" in entry:
                continue
            print(f"round {r + 1}/{args.rounds}: {name} {args.workload} …", file=sys.stderr, flush=True)
            try:
                got = run_jetdag(args) if name == "jetdag" else run_peer(name, args)
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as e:
                print(f"{name} failed: {e}", file=sys.stderr)
                entry["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
                entry["error_detail"] = str(e)[-2000:]
                continue
            entry["rounds"].append(got)
            print(f"  {wl.unit}: {got[wl.figure]}", file=sys.stderr, flush=True)
    for entry in systems.values():
        rounds = entry["rounds"]
        if rounds:
            entry["value"] = round(statistics.median(r[wl.figure] for r in rounds), 3)
            entry["n"] = rounds[0]["n"]
            entry["versions"] = rounds[0].get("versions", {"jetdag": jetdag_version()})
            if "setup" in rounds[0]:
                entry["setup"] = rounds[0]["setup"]
            if entry["n"] != args.n:
                entry["note"] = f"measured at n = {entry['n']:,}, not {args.n:,} (--prefect-n)"
    if systems.get("celery", {}).get("versions"):
        redis = subprocess.run([redis_server(), "--version"], capture_output=True, text=True).stdout
        systems["celery"]["versions"]["redis-server"] = redis.split(" sha=")[0].split(" v=")[-1]
    base = systems["jetdag"].get("value")
    ratios = {p: round(base / systems[p]["value"], 3) for p in args.peers if base and systems[p].get("value")}
    return harness.record(
        "compare",
        workload=args.workload,
        n=args.n,
        reps=args.reps if args.workload in ("chain", "fanout") else None,
        rounds=args.rounds,
        figure=wl.figure,
        unit=wl.unit,
        higher_is_better=wl.higher,
        systems=[{"system": name, **entry} for name, entry in systems.items()],  # value: the median of the rounds
        ratios=ratios,
    )


def verdict(jetdag: float, value: float, higher: bool, peer: str) -> str:
    """Which one is faster, and by how much (from the medians, not the rounded ratio)."""
    speedup = jetdag / value if higher else value / jetdag
    return f"jetdag {speedup:.2f}x" if speedup >= 1 else f"{peer} {1 / speedup:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, "compare")
    parser.add_argument("workload", choices=list(WORKLOADS), help="the workload to run on every system")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), metavar="PEER", help="of: celery taskiq prefect")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each running every system once (default 2)")
    parser.add_argument("-n", type=int, help="tasks, steps, width or runs (default: 5000, 100, 500, 500)")
    parser.add_argument("--reps", type=int, default=3, help="chain and fanout: runs measured per round (default 3)")
    parser.add_argument("--prefect-n", type=int, default=1000, help="throughput tasks for Prefect (default 1000)")
    parser.add_argument("--taskiq-batch", type=int, default=1, help="taskiq-nats messages per pull (default 1)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one system's run may take (default 900)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer {', '.join(map(repr, unknown))}: one of {', '.join(PEERS)}")
    args.peers = list(dict.fromkeys(args.peers))
    args.n = args.n or WORKLOADS[args.workload].n
    if args.n < 1 or args.rounds < 1 or args.reps < 1 or args.prefect_n < 1:
        parser.error("-n, --rounds, --reps and --prefect-n must be at least 1")
    if "celery" in args.peers:
        redis_server()  # before anything runs: a clear error when it is missing
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rec = measure(args)
    except KeyboardInterrupt:
        print("interrupted: every process stopped", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("terminated: every process stopped", file=sys.stderr)
        return 128 + signal.SIGTERM
    wl = WORKLOADS[args.workload]
    title = (
        f"compare {args.workload}: {wl.describe.format(n=args.n)}; {wl.unit}, median of {args.rounds} rounds "
        f"run in turn (jetdag, {', '.join(args.peers)}); {'higher' if wl.higher else 'lower'} is better"
    )
    rows = []
    base = rec["systems"][0].get("value")
    for entry in rec["systems"]:
        name = entry["system"]
        if "value" in entry:
            per_round = ", ".join(str(r[wl.figure]) for r in entry["rounds"])
            ratio = rec["ratios"].get(name)
            rows.append([
                name,
                " ".join(f"{k} {v}" for k, v in entry["versions"].items()),
                entry["n"],
                per_round,
                entry["value"],
                "" if ratio is None else ratio,
                "" if ratio is None else verdict(base, entry["value"], wl.higher, name),
            ])  # fmt: skip
        else:
            rows.append([name, "", "", entry.get("skipped") or f"failed: {entry.get('error')}", "", "", ""])
    columns = ["system", "versions", "n", f"{wl.unit} per round", "median", "jetdag/peer", "faster by"]
    harness.finish(args, rec, title, columns, rows)
    if not args.json:
        for entry in rec["systems"]:
            if "setup" in entry:
                print(f"{entry['system']}: {entry['setup']}" + (f"; {entry['note']}" if "note" in entry else ""))
        print("Shared machine: figures are noisy; the rounds alternate the systems so that noise falls on all.")
    return 1 if any("error" in e for e in rec["systems"]) else 0


if __name__ == "__main__":
    sys.exit(main())
