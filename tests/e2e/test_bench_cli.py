"""`jetdag bench`: the list of workloads, pass-through of options and exit codes, and small runs of the
chain, fanout and runs workloads through their real processes (nats-server, engine, two workers)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from jetdag.engine import cli
from tests.e2e.up_process import JETDAG, clean_env, jetdag
from tests.helpers import eventually_sync

RESULTS = cli._bench_dir() / "results"
WORKLOADS = list(cli.BENCH_WORKLOADS)


def results() -> dict[str, tuple[int, int]]:
    """The result files of the workloads these tests run (others may be written by benchmarks running meanwhile)."""
    files = [RESULTS / f"{name}.jsonl" for name in ("chain", "fanout", "runs")]
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists()}


@pytest.fixture(autouse=True)
def nothing_saved() -> Iterator[None]:
    """--no-save keeps the checkout's results/*.jsonl as they are."""
    before = results()
    yield
    assert results() == before


def bench(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return jetdag("bench", *args, cwd=tmp_path, timeout=timeout)


def record(tmp_path: Path, *args: str) -> dict[str, Any]:
    done = bench(tmp_path, *args, "--no-save", "--json")
    assert done.returncode == 0, done.stderr
    rec = orjson.loads(done.stdout)
    assert isinstance(rec, dict)
    assert {"bench", "when", "machine"} <= rec.keys()
    assert {"cpu", "cores", "mem_gib", "python", "nats_server"} <= rec["machine"].keys()
    return rec


@pytest.mark.parametrize("args", [(), ("--list",)])
def test_lists_the_workloads_with_a_line_each(tmp_path: Path, args: tuple[str, ...]) -> None:
    done = bench(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line and not line.startswith("Run one")}
    assert list(lines) == WORKLOADS
    assert all(len(line.split()) > 3 for line in lines.values()), done.stdout  # a description, not "(not found)"


def test_unknown_workload_is_a_usage_error(tmp_path: Path) -> None:
    done = bench(tmp_path, "nosuch")
    assert done.returncode == 2
    assert "no workload 'nosuch'" in done.stderr


def test_options_and_exit_code_are_the_workloads(tmp_path: Path) -> None:
    helped = bench(tmp_path, "chain", "--help")
    assert helped.returncode == 0
    assert "usage: jetdag bench chain" in helped.stdout and "--steps" in helped.stdout
    refused = bench(tmp_path, "chain", "--steps", "1")
    assert refused.returncode == 2
    assert "--steps must be at least 2" in refused.stderr


def test_without_a_checkout_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_bench_dir", lambda: tmp_path / "bench")
    result = CliRunner().invoke(cli.main, ["bench", "chain"])
    assert result.exit_code == 2
    assert f"jetdag bench runs from a source checkout: {tmp_path / 'bench'} not found" in result.stderr


@pytest.mark.timeout(90)
def test_chain(tmp_path: Path) -> None:
    rec = record(tmp_path, "chain", "--steps", "5", "--runs", "1")
    assert rec["bench"] == "chain"
    assert (rec["steps"], rec["runs"], rec["samples"]) == (5, 1, 4)
    assert 0 < rec["step_p50_ms"] <= rec["step_p99_ms"] <= rec["step_max_ms"]
    assert rec["run_p50_s"] > 0


@pytest.mark.timeout(90)
def test_fanout(tmp_path: Path) -> None:
    rec = record(tmp_path, "fanout", "--width", "10", "--reps", "2")
    assert rec["bench"] == "fanout"
    assert (rec["width"], rec["tasks"], rec["reps"], len(rec["runs_s"])) == (10, 12, 2, 2)
    assert 0 < rec["min_s"] <= rec["p50_s"] <= rec["max_s"]


@pytest.mark.timeout(90)
def test_runs(tmp_path: Path) -> None:
    rec = record(tmp_path, "runs", "-n", "20", "--warmup", "5")
    assert rec["bench"] == "runs"
    assert (rec["runs"], rec["tasks_per_run"]) == (20, 3)
    assert rec["runs_per_s"] > 0 and rec["tasks_per_s"] == pytest.approx(3 * rec["runs_per_s"], rel=0.01)
    assert 0 < rec["p50_ms"] <= rec["p99_ms"]


def processes(session: int, marker: str) -> list[str]:
    """Processes in `session` or with `marker` in their command line (nats-server runs in a session of its own)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not a process
            continue
        if proc.name.isdigit() and (int(stat[stat.rindex(")") + 2 :].split()[3]) == session or marker in cmdline):
            found.append(f"{proc.name} {cmdline}")
    return found


@pytest.mark.timeout(90)
def test_ctrl_c_stops_every_process_and_removes_the_temp_dir(tmp_path: Path) -> None:
    """Ctrl-C in a terminal is SIGINT to the whole foreground process group."""
    args = ["bench", "chain", "--steps", "100", "--runs", "100", "--no-save"]
    proc = subprocess.Popen(
        [JETDAG, *args], cwd=tmp_path, env=clean_env(TMPDIR=str(tmp_path)), start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def stack_up() -> bool:
            logs = [*tmp_path.glob("jetdag-bench-*/engine.log"), *tmp_path.glob("jetdag-bench-*/worker*.log")]
            return len(logs) == 3 and all(b"connected to" in log.read_bytes() for log in logs)

        eventually_sync(stack_up, timeout=30)
        assert len(processes(proc.pid, str(tmp_path))) == 6  # jetdag bench, chain.py, nats-server, engine, 2 workers
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "interrupted: every process stopped" in err.decode()
    assert processes(proc.pid, str(tmp_path)) == []
    assert list(tmp_path.glob("jetdag-bench-*")) == []


def test_plot_draws_the_recorded_results_or_says_what_it_needs(tmp_path: Path) -> None:
    done = bench(tmp_path, "plot", "--out", str(tmp_path / "plots"))
    if importlib.util.find_spec("matplotlib") is None:  # `make test` installs the dev extra only
        assert done.returncode == 2 and "make bench-deps" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    made = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert {"scale.png", "latency.png", "rates.png"} <= set(made), made


def test_compare_help_names_its_peers(tmp_path: Path) -> None:
    done = bench(tmp_path, "compare", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: jetdag bench compare" in done.stdout
    assert all(word in done.stdout for word in ("--peers", "--rounds", "Celery", "taskiq", "Prefect"))


def test_compare_refuses_an_unknown_peer_before_running_anything(tmp_path: Path) -> None:
    """Checked first: no peer is installed, no Redis needed, nothing started."""
    done = bench(tmp_path, "compare", "throughput", "--peers", "celery", "airflow", "--no-save")
    assert done.returncode == 2
    assert "unknown peer 'airflow': one of celery, taskiq, prefect" in done.stderr
    assert "round 1/" not in done.stderr  # no system ran


def test_ceiling(tmp_path: Path) -> None:
    rec = record(tmp_path, "ceiling", "-n", "256")
    assert rec["n"] == 256
    assert all(rec[f"{name}_per_s"] > 0 for name in ("publish", "cycle", "kv"))
    assert rec["implied_jetdag_tasks_per_s"] == round(rec["publish_per_s"] / 10, 1)


def test_filestorm(tmp_path: Path) -> None:
    rec = record(tmp_path, "filestorm", "-n", "100", "--dirs", "5", "--workers", "1", "--concurrency", "16")
    assert rec["n"] == 100 and rec["missed"] == 0 and rec["doubled"] == 0


def test_scheduler_help_says_what_it_measures(tmp_path: Path) -> None:
    """A run takes minutes (whole minutes of ticks): its options are checked here, its figures in RESULTS.md."""
    done = bench(tmp_path, "scheduler", "--help")
    assert done.returncode == 0 and all(o in done.stdout for o in ("--minutely", "--secondly", "--kill"))
    done = bench(tmp_path, "scheduler", "--kill", "--no-save")
    assert done.returncode == 2 and "--kill needs --engines 2 or more" in done.stderr
