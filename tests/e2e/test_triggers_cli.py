"""Triggers from the command line against a real `jetdag up`: backfill, schedules, and definitions that follow
their files (`up --workflows DIR`)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.e2e.up_process import Up, start_up, stop_up, write
from tests.helpers import eventually_sync

HOURLY = """\
name: hourly
schedule: "0 * * * *"
tasks:
  - {name: a, handler: noop}
"""


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    flows = tmp_path / "flows"
    flows.mkdir()
    write(flows / "hourly.yaml", HOURLY)
    running = start_up(tmp_path, False, "--workflows", str(flows))
    try:
        yield running
    finally:
        stop_up(running, signal.SIGTERM)


def test_backfill_previews_then_starts_each_tick_once(up: Up) -> None:
    args = ("backfill", "hourly", "--from", "2026-11-01", "--to", "2026-11-02T23:00")
    preview = up.cli(*args, "--dry-run")
    assert preview.returncode == 0, preview.stderr
    lines = preview.stdout.splitlines()
    assert lines[0] == "backfill of hourly: 48 run(s), 48 new, 0 there"
    assert lines[1].startswith("  2026-11-01T00:00:00Z  ") and lines[1].endswith("  new")
    assert up.json("runs", "--workflow", "hourly") == []
    started = up.cli(*args)
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines()[-1] == "started 48 run(s)"
    again = up.cli(*args, "--json")
    assert again.returncode == 0 and all(r["exists"] for r in orjson.loads(again.stdout))
    eventually_sync(lambda: len(up.json("runs", "--workflow", "hourly", "--status", "succeeded")) == 48, timeout=30)


def test_backfill_says_what_is_wrong(up: Up) -> None:
    done = up.cli("backfill", "hourly", "--from", "2026-11-02", "--to", "2026-11-01")
    assert done.returncode == 2 and "ends (2026-11-01T00:00:00Z) before it starts" in done.stderr
    done = up.cli("backfill", "hourly", "--from", "yesterday", "--to", "2026-11-01")
    assert done.returncode == 2 and "expected ISO 8601" in done.stderr
    done = up.cli("backfill", "nobody", "--from", "2026-11-01", "--to", "2026-11-02")
    assert done.returncode == 2 and "nobody" in done.stderr


def test_schedules_lists_and_switches(up: Up) -> None:
    [view] = up.json("schedules")
    assert view["workflow"] == "hourly" and view["enabled"] is True and view["triggers"][0]["what"] == "0 * * * *"
    table = up.cli("schedules")
    assert table.stdout.splitlines()[1].split()[:4] == ["hourly", "on", "cron", "0"]
    off = up.cli("schedules", "hourly", "--off")
    assert off.returncode == 0 and off.stdout.splitlines()[1].split()[1] == "off"
    assert up.json("schedules", "hourly")[0]["enabled"] is False


def test_a_changed_definition_file_is_applied_again(up: Up) -> None:
    flows = up.root / "flows"
    write(flows / "hourly.yaml", HOURLY.replace('"0 * * * *"', '"30 * * * *"'))
    eventually_sync(lambda: up.json("schedules", "hourly")[0]["triggers"][0]["what"] == "30 * * * *", timeout=15)
    write(flows / "hourly.yaml", HOURLY.replace("handler: noop", "handler: [oops"))
    eventually_sync(lambda: "hourly.yaml:4:" in up.log() and "kept the version applied before" in up.log(), timeout=15)
    assert up.json("schedules", "hourly")[0]["triggers"][0]["what"] == "30 * * * *"
    write(flows / "daily.yaml", HOURLY.replace("hourly", "daily").replace('"0 * * * *"', '"0 0 * * *"'))
    eventually_sync(lambda: {v["workflow"] for v in up.json("schedules")} == {"hourly", "daily"}, timeout=15)
