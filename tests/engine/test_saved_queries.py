"""Saved queries: jetdag's own, the user's file on top, and clear errors for a broken file."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from jetdag.engine.audit import schema
from jetdag.engine.audit.saved import load_saved
from jetdag.engine.errors import ConfigError


def test_every_shipped_query_runs_on_the_schema() -> None:
    con = duckdb.connect()
    con.execute(schema.DDL)
    for query in load_saved().values():
        con.execute(query.sql).fetchall()  # an empty log still answers every one
        assert query.description


def test_a_user_file_adds_and_replaces(tmp_path: Path) -> None:
    mine = tmp_path / "queries.toml"
    mine.write_text('[failures]\nsql = "SELECT 1"\n[mine]\ndescription = "x"\nsql = "SELECT 2"\n')
    saved = load_saved(mine)
    assert saved["failures"].sql == "SELECT 1" and saved["mine"].description == "x"
    assert "retries" in saved


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[q]\nsql = 1\n", "[q] needs 'sql', a string holding one SELECT"),
        ('[q]\nsql = "SELECT 1"\nsq = 2\n', "[q] has unknown key(s) sq"),
        ("q = 1\n", "[q] must be a table"),
        ("[q\n", "invalid TOML"),
    ],
)
def test_a_broken_user_file_names_itself_and_the_query(tmp_path: Path, text: str, message: str) -> None:
    mine = tmp_path / "queries.toml"
    mine.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{mine}: .*") as caught:
        load_saved(mine)
    assert message in str(caught.value)
