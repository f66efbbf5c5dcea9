"""The `jetdag` CLI as a subprocess against a real `jetdag up` (embedded nats-server, engine, worker, web)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from jetdag.engine.cli import main as cli_main
from jetdag.engine.nats.server import NatsServer
from tests.e2e.up_process import (
    Up,
    clean_env,
    endpoint,
    exited,
    healthy,
    jetdag,
    nats_servers,
    start_up,
    stop_up,
    write,
)
from tests.helpers import eventually_sync

RUN_ID = re.compile(r"[0-9A-Z]{26}")

DIAMOND = """\
name: diamond
tasks:
  - name: a
    handler: command
    payload: {argv: [echo, extract]}
  - name: b
    handler: command
    depends_on: a
    payload: {argv: [echo, left]}
  - name: c
    handler: command
    depends_on: a
    payload: {argv: [echo, right]}
  - name: d
    handler: command
    depends_on: [b, c]
    payload: {argv: [echo, load]}
"""

FAILING = """\
name: failing
tasks:
  - name: boom
    handler: command
    max_retries: 0
    payload: {argv: ["false"]}
"""

TANGLED = """\
name: tangled
tasks:
  - name: x
    handler: noop
    depends_on: y
  - name: y
    handler: noop
    depends_on: x
  - name: z
    handler: noop
    depends_on: nosuch
"""


# --- a shared `jetdag up` -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = start_up(tmp_path_factory.mktemp("up"))
    try:
        yield running
    finally:
        stop_up(running, signal.SIGTERM)


@pytest.fixture(scope="module")
def applied(up: Up) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """`apply diamond.yaml` twice."""
    write(up.root / "diamond.yaml", DIAMOND)
    return up.cli("apply", "diamond.yaml"), up.cli("apply", "diamond.yaml")


@pytest.fixture(scope="module")
def diamond_run(up: Up, applied: object) -> tuple[str, subprocess.CompletedProcess[str]]:
    done = up.cli("submit", "diamond", "--wait")
    return done.stdout.splitlines()[0] if done.stdout else "", done


@pytest.fixture(scope="module")
def failed_run(up: Up) -> tuple[str, subprocess.CompletedProcess[str]]:
    write(up.root / "failing.yaml", FAILING)
    assert up.cli("apply", "failing.yaml").returncode == 0
    done = up.cli("submit", "failing", "--wait")
    return done.stdout.splitlines()[0] if done.stdout else "", done


# --- definitions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["worker", "engine", "web"])
def test_a_role_without_a_stack_to_join_says_what_to_start(tmp_path: Path, role: str) -> None:
    done = jetdag(role, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: no running jetdag found in .jetdag: start `jetdag up`"), done.stderr
    assert "Traceback" not in done.stderr


def test_validate_accepts_a_good_definition(tmp_path: Path) -> None:
    write(tmp_path / "diamond.yaml", DIAMOND)
    done = jetdag("validate", "diamond.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "diamond" in done.stdout
    assert done.stderr == ""


def test_validate_reports_a_cycle_and_an_unknown_dependency_as_path_line_col(tmp_path: Path) -> None:
    write(tmp_path / "tangled.yaml", TANGLED)
    done = jetdag("validate", "tangled.yaml", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines, "no error printed"
    assert all(re.fullmatch(r"tangled\.yaml:\d+:\d+: .+", line) for line in lines), lines
    assert any("cycle" in line and "x" in line and "y" in line for line in lines), lines
    assert any(line.startswith("tangled.yaml:11:") and "'nosuch'" in line for line in lines), lines


def test_validate_reports_toml_and_python_errors_with_their_places(tmp_path: Path) -> None:
    write(tmp_path / "phases.toml", '[[Phase]]\ntask = "a"\nrule = "cron=0 0 1 * *&offest=-1h"\n')
    write(tmp_path / "flows.py", 'from jetdag.engine.workflow import Task, Workflow\nwf = Workflow(name="w")\n')
    done = jetdag("validate", "phases.toml", "flows.py", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "phases.toml:3:24: unknown rule key 'offest' in phase 'a' (did you mean 'offset'?)",
        "flows.py:2:1: workflow 'w' has no tasks: add them with wf.add(Task(...))",
    ]


def test_validate_prints_warnings_to_stderr_and_still_exits_0(tmp_path: Path) -> None:
    write(tmp_path / "early.yaml", "name: early\nschedule: '0 0 1 * * *'\n" + DIAMOND.split("\n", 1)[1])
    done = jetdag("validate", "early.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok: 1 workflow(s): early\n"
    [warning] = done.stderr.splitlines()
    assert warning.startswith("early.yaml:2:11: warning: '0 0 1 * * *' has 6 fields: jetdag reads the seconds first")
    as_json = jetdag("validate", "--json", "early.yaml", cwd=tmp_path)
    assert (as_json.returncode, as_json.stderr) == (0, "")
    assert orjson.loads(as_json.stdout) == {"workflows": ["early"], "errors": [], "warnings": [warning]}


def test_every_example_runs_in_up(tmp_path: Path) -> None:
    """`make run`'s promise: the examples of every format load and succeed (flaky on its third attempt)."""
    up = start_up(tmp_path, examples=True)
    try:
        for args in (("nightly", "--at", "2026-01-02"), ("ingest", "-p", "dir=/tmp"), ("diamond",), ("report",)):
            done = up.cli("submit", *args, "--wait")
            assert done.returncode == 0, done.stdout + done.stderr
        # The trigger examples: a CSV dropped into ./.jetdag/inbox/, a message on orders.created.
        inbox = tmp_path / ".jetdag" / "inbox"
        inbox.mkdir(parents=True)
        (inbox / "sales-2026-11-22.csv").write_text("a\nb\n")
        asyncio.run(_publish(up.nats, "orders.created", b'{"id": 42}'))
        views = {
            workflow: eventually_sync(lambda w=workflow: _finished(up, w), timeout=20)
            for workflow in ("inbox", "orders")
        }  # type: ignore[misc]
        assert views["inbox"]["status"] == views["orders"]["status"] == "succeeded", views
        assert views["inbox"]["tasks"]["report"]["result"]["stdout"].startswith("sales-2026-11-22.csv of 2026-11-22: 2")
        assert views["orders"]["tasks"]["take"]["result"]["stdout"] == "order 42 from orders.created\n"
    finally:
        stop_up(up, signal.SIGTERM)


async def _publish(url: str, subject: str, data: bytes) -> None:
    nc = await nats.connect(url)
    try:
        await nc.publish(subject, data)
        await nc.flush()
    finally:
        await nc.close()


def _finished(up: Up, workflow: str) -> dict[str, Any] | None:
    """The workflow's one run once it has finished."""
    runs = up.json("runs", "--workflow", workflow)
    if len(runs) != 1:
        return None
    view: dict[str, Any] = up.json("status", runs[0]["run_id"])
    return view if view["status"] in ("succeeded", "failed", "cancelled") else None


def test_apply_reports_created_then_unchanged(applied: tuple[subprocess.CompletedProcess[str], ...]) -> None:
    first, second = applied
    assert first.returncode == 0, first.stderr
    created = re.fullmatch(r"diamond: created \(version (\d+)\)\n", first.stdout)
    assert created, first.stdout
    assert second.returncode == 0, second.stderr
    assert second.stdout == f"diamond: unchanged (version {created.group(1)})\n"


def test_apply_with_a_bad_file_exits_2_and_registers_nothing(up: Up) -> None:
    write(up.root / "lonely.yaml", DIAMOND.replace("name: diamond", "name: lonely"))
    write(up.root / "tangled.yaml", TANGLED)
    done = up.cli("apply", "lonely.yaml", "tangled.yaml")
    assert done.returncode == 2
    assert "tangled.yaml:" in done.stderr
    assert "created" not in done.stdout
    unknown = up.cli("submit", "lonely")
    assert unknown.returncode == 2
    assert "lonely" in unknown.stderr


# --- runs -----------------------------------------------------------------------------------------


def test_submit_wait_prints_the_run_id_alone_first_and_exits_0(diamond_run: tuple[str, Any]) -> None:
    run_id, done = diamond_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert RUN_ID.fullmatch(run_id), done.stdout


def test_status_json_shows_the_run_and_each_task(up: Up, diamond_run: tuple[str, Any]) -> None:
    run_id, _ = diamond_run
    view = up.json("status", run_id)
    assert view["run_id"] == run_id
    assert view["workflow"] == "diamond"
    assert view["status"] == "succeeded"
    assert {name: (t["status"], t["attempts"]) for name, t in view["tasks"].items()} == {
        name: ("succeeded", 1) for name in "abcd"
    }


def test_runs_json_lists_runs_newest_first_without_tasks(up: Up, diamond_run: tuple[str, Any]) -> None:
    older, _ = diamond_run
    newer = up.cli("submit", "diamond", "--wait").stdout.splitlines()[0]
    runs = up.json("runs")
    ids = [r["run_id"] for r in runs]
    assert ids.index(newer) < ids.index(older)
    assert [r["created_at"] for r in runs] == sorted((r["created_at"] for r in runs), reverse=True)
    assert all("tasks" not in r for r in runs)
    assert {"run_id", "workflow", "status"} <= set(runs[0])


def test_submit_wait_exits_1_when_a_task_fails(up: Up, failed_run: tuple[str, Any]) -> None:
    run_id, done = failed_run
    assert done.returncode == 1, done.stdout + done.stderr
    assert RUN_ID.fullmatch(run_id)
    view = up.json("status", run_id)
    assert view["status"] == "failed"
    assert view["tasks"]["boom"]["status"] == "failed"
    assert view["tasks"]["boom"]["attempts"] == 1


def test_runs_filter_by_workflow_status_and_limit(
    up: Up, diamond_run: tuple[str, Any], failed_run: tuple[str, Any]
) -> None:
    succeeded_id, failed_id = diamond_run[0], failed_run[0]
    failing = up.json("runs", "--workflow", "failing")
    assert [r["run_id"] for r in failing] == [failed_id]
    failed = up.json("runs", "--status", "failed")
    assert failed_id in {r["run_id"] for r in failed}
    assert {r["status"] for r in failed} == {"failed"}
    diamonds = up.json("runs", "--workflow", "diamond", "--status", "succeeded")
    assert succeeded_id in {r["run_id"] for r in diamonds}
    assert {(r["workflow"], r["status"]) for r in diamonds} == {("diamond", "succeeded")}
    one = up.json("runs", "--workflow", "diamond", "--limit", "1")
    assert len(one) == 1
    assert one[0]["run_id"] == diamonds[0]["run_id"]
    assert up.json("runs", "--workflow", "failing", "--status", "succeeded") == []


def test_sql_answers_in_table_csv_and_json_and_refuses_writes(up: Up, diamond_run: tuple[str, Any]) -> None:
    run_id, _ = diamond_run
    query = f"SELECT task, status FROM tasks WHERE run_id = '{run_id}' ORDER BY task"

    def answered() -> subprocess.CompletedProcess[str] | None:
        done = up.cli("sql", query, "--format", "csv")
        return done if done.stdout.count("succeeded") == 4 else None

    csv_done = eventually_sync(answered, timeout=10, interval=0.1)
    assert csv_done is not None
    assert csv_done.stdout.splitlines() == ["task,status", "a,succeeded", "b,succeeded", "c,succeeded", "d,succeeded"]
    table = up.cli("sql", query)
    assert table.stdout.splitlines()[0].split() == ["task", "status"]
    assert table.stdout.splitlines()[-1] == "(4 rows)"
    as_json = orjson.loads(up.cli("sql", query, "--format", "json").stdout)
    assert as_json["rows"][0] == ["a", "succeeded"]
    refused = up.cli("sql", "DROP TABLE runs")
    assert refused.returncode == 2 and "read-only" in refused.stderr
    listed = up.cli("sql", "--list")
    assert any(line.startswith("@failures") for line in listed.stdout.splitlines())
    saved = up.cli("sql", "@runs_by_day", "--format", "json")
    assert orjson.loads(saved.stdout)["columns"][:3] == ["day", "workflow", "status"]


def test_status_summary_shows_the_critical_path(up: Up, diamond_run: tuple[str, Any]) -> None:
    run_id, _ = diamond_run
    summary = up.json("status", run_id, "--summary")
    assert summary["status"] == "succeeded"
    assert summary["critical_path"][0] == "a" and summary["critical_path"][-1] == "d"
    text = up.cli("status", run_id, "--summary")
    assert "critical path" in text.stdout and text.returncode == 0


def test_audit_export_writes_parquet_and_prune_keeps_recent_runs(up: Up, diamond_run: tuple[str, Any]) -> None:
    done = up.cli("audit", "export", "--to", "backup")
    assert done.returncode == 0, done.stderr
    assert list((up.root / "backup" / "events").glob("day=*/*.parquet"))
    pruned = up.json("audit", "prune")
    assert pruned["runs"] == 0, "nothing is 90 days old"


def test_submit_of_an_unknown_workflow_exits_2_naming_it(up: Up) -> None:
    done = up.cli("submit", "nosuch")
    assert done.returncode == 2
    assert "nosuch" in done.stderr
    assert done.stdout == ""


def test_submit_params_are_json_values_else_strings(up: Up, applied: object) -> None:
    done = up.cli("submit", "diamond", "-p", "n=3", "-p", "name=x", "--wait")
    assert done.returncode == 0, done.stderr
    view = up.json("status", done.stdout.splitlines()[0])
    assert view["params"] == {"n": 3, "name": "x"}


def test_jetdag_nats_environment_variable_replaces_the_data_dir(
    up: Up, diamond_run: tuple[str, Any], tmp_path: Path
) -> None:
    run_id, _ = diamond_run
    done = jetdag("status", run_id, "--json", cwd=tmp_path, env=clean_env(JETDAG_NATS=up.nats))
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["run_id"] == run_id


# --- the CLI itself -------------------------------------------------------------------------------


def test_the_cli_offers_the_documented_verbs() -> None:
    assert {"up", "engine", "worker", "apply", "validate", "submit", "status", "runs"} <= set(cli_main.commands)


@pytest.mark.parametrize("verb", ["", *sorted(cli_main.commands)])
def test_every_verb_has_help(verb: str, tmp_path: Path) -> None:
    done = jetdag(*([verb] if verb else []), "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout


def test_a_second_up_on_the_same_data_dir_exits_2_and_leaves_the_first_running(up: Up) -> None:
    done = up.cli("up", "--http", "127.0.0.1:0", "--no-examples", timeout=20)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "another `jetdag up`" in done.stderr
    assert f"pid {up.proc.pid}" in done.stderr
    assert endpoint(up.data) == {"nats": up.nats, "http": up.http, "pid": up.proc.pid}
    assert healthy(up.http)


def test_a_command_without_a_running_up_exits_2_telling_to_start_it(tmp_path: Path) -> None:
    done = jetdag("status", "X", "--data", str(tmp_path / "empty"), cwd=tmp_path)
    assert done.returncode == 2
    assert "start `jetdag up`" in done.stderr


def test_a_command_against_a_nats_without_jetdag_exits_2(nats_server: NatsServer, tmp_path: Path) -> None:
    done = jetdag("runs", "--nats", nats_server.url, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "jetdag up" in done.stderr


def test_a_command_against_an_unreachable_nats_exits_2_instead_of_hanging(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = jetdag("runs", "--nats", f"nats://127.0.0.1:{port}", cwd=tmp_path, timeout=20)
    assert done.returncode == 2
    assert f"cannot reach NATS at nats://127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize(
    ("toml", "shown", "hint"),
    [("[runs]\nlimt = 5\n", "'runs.limt'", "did you mean 'limit'"), ('nast = "x"\n', "'nast'", "did you mean 'nats'")],
)
def test_an_unknown_key_in_jetdag_toml_exits_2_naming_file_and_key(
    tmp_path: Path, toml: str, shown: str, hint: str
) -> None:
    config = write(tmp_path / "jetdag.toml", toml)
    done = jetdag("runs", cwd=tmp_path)
    assert done.returncode == 2
    assert str(config) in done.stderr
    assert shown in done.stderr
    assert hint in done.stderr


# --- chaos: each with its own `jetdag up` -------------------------------------------------------


@pytest.mark.chaos
def test_kill_9_of_up_takes_its_nats_server_down(tmp_path: Path) -> None:
    up = start_up(tmp_path)
    servers = nats_servers(up)
    try:
        up.proc.kill()
        assert up.proc.wait(10) == -signal.SIGKILL
        eventually_sync(lambda: all(exited(s) for s in servers), timeout=15)
    finally:
        for pid in servers:
            with contextlib.suppress(ProcessLookupError):
                if not exited(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.chaos
def test_sigint_stops_up_cleanly_and_a_new_up_finds_the_earlier_runs(tmp_path: Path) -> None:
    first = start_up(tmp_path)
    try:
        write(tmp_path / "diamond.yaml", DIAMOND)
        assert first.cli("apply", "diamond.yaml").returncode == 0
        done = first.cli("submit", "diamond", "--wait")
        assert done.returncode == 0, done.stderr
        run_id = done.stdout.splitlines()[0]
    finally:
        stop_up(first, signal.SIGINT)

    second = start_up(tmp_path)  # the lock was released: this `up` takes the same data dir
    try:
        runs = second.json("runs")
        assert [(r["run_id"], r["status"]) for r in runs] == [(run_id, "succeeded")]
        assert second.json("status", run_id)["tasks"]["d"]["status"] == "succeeded"
    finally:
        stop_up(second, signal.SIGTERM)
