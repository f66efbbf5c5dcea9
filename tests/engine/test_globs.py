"""File-trigger patterns: Go filepath.Match semantics, where to watch, and the time a file's path carries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from jetdag.engine.globs import Glob, check_pattern, file_meta, path_time


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/folder/*/*/*.txt", "/folder/a/b/c.txt", True),
        ("/folder/*/*/*.txt", "/folder/a/b/c/d.txt", False),
        ("/folder/*/*/*.txt", "/folder/a/c.txt", False),
        ("/folder/*/*/*.txt", "/folder/a/b/c.csv", False),
        ("/data/*.csv", "/data/sub/x.csv", False),
        ("/data/*.csv", "/data/.hidden.csv", True),
        ("/data/*", "/data/", False),
        ("/data/*", "/data", False),
        ("/data/x*y", "/data/xy", True),
        ("/data/x*y", "/data/x/y", False),
        ("/data/file?.csv", "/data/file1.csv", True),
        ("/data/file?.csv", "/data/file.csv", False),
        ("/data/file?.csv", "/data/file12.csv", False),
        ("/data/a?b", "/data/a/b", False),
        ("/data/[abc].csv", "/data/b.csv", True),
        ("/data/[abc].csv", "/data/d.csv", False),
        ("/data/[a-c0-9].csv", "/data/7.csv", True),
        ("/data/[^a-c].csv", "/data/d.csv", True),
        ("/data/[^a-c].csv", "/data/b.csv", False),
        ("/data/[!a-c].csv", "/data/d.csv", True),
        ("/data/[!a-c].csv", "/data/a.csv", False),
        ("/data/a[^x]b", "/data/a/b", False),
        ("/data/a[ -0]b", "/data/a/b", False),
        ("/data/a[ -0]b", "/data/a-b", True),
        ("/data/[\\]].csv", "/data/].csv", True),
        ("/data/[\\-].csv", "/data/-.csv", True),
        ("/data/[\\^x].csv", "/data/^.csv", True),
        ("/data/\\*.csv", "/data/*.csv", True),
        ("/data/\\*.csv", "/data/x.csv", False),
        ("/data/\\?", "/data/?", True),
        ("/data/\\[x]", "/data/[x]", True),
        ("/data/a\\\\b", "/data/a\\b", True),
        ("/data/a]b", "/data/a]b", True),
        ("/data/in/x.csv", "/data/in/x.csv", True),
        ("/data/in/x.csv", "/data/in/x.csvz", False),
        ("/data/in/x.csv", "/data/in/y.csv", False),
        ("/data/a.c", "/data/abc", False),
        ("/data/(x)+.csv", "/data/(x)+.csv", True),
        ("/data//in/./x.csv", "/data/in/x.csv", True),
        ("/data/in/../out/*.csv", "/data/out/a.csv", True),
        ("/data/in/", "/data/in", True),
        ("/data/*.csv", "/data//in/../a.csv", True),
        ("/data/*.csv", "//data/a.csv", True),
    ],
)
def test_match_follows_go_filepath_match(pattern: str, path: str, matches: bool) -> None:
    assert Glob(pattern).match(path) is matches


def test_match_takes_a_path_object() -> None:
    assert Glob("/data/*.csv").match(Path("/data/a.csv"))


def test_match_refuses_a_relative_path() -> None:
    with pytest.raises(ValueError, match=r"absolute path, got 'data/a\.csv'"):
        Glob("/data/*.csv").match("data/a.csv")


@pytest.mark.parametrize(
    ("pattern", "base", "absolute"),
    [
        ("in/*.csv", "/srv/jobs", "/srv/jobs/in/*.csv"),
        ("./in/*.csv", "/srv/jobs", "/srv/jobs/in/*.csv"),
        ("../in/*.csv", "/srv/jobs", "/srv/in/*.csv"),
        ("*.csv", "/", "/*.csv"),
        ("/abs/*.csv", "/srv/jobs", "/abs/*.csv"),
        ("in/*.csv", "/srv/a[1]*?", "/srv/a\\[1]\\*\\?/in/*.csv"),
    ],
)
def test_relative_patterns_are_taken_against_the_base(pattern: str, base: str, absolute: str) -> None:
    glob = Glob(pattern, base=Path(base))
    assert glob.pattern == absolute
    assert Glob(glob.pattern) == glob


def test_a_base_with_wildcard_characters_matches_only_itself() -> None:
    glob = Glob("in/*.csv", base=Path("/srv/a[1]*"))
    assert glob.match("/srv/a[1]*/in/x.csv")
    assert not glob.match("/srv/a1x/in/x.csv")
    assert glob.root == Path("/srv/a[1]*/in")


def test_the_default_base_is_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    glob = Glob("in/*.csv")
    assert glob.pattern == f"{tmp_path}/in/*.csv"
    assert glob.match(tmp_path / "in" / "x.csv")


def test_the_base_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="must be an absolute directory"):
        Glob("in/*.csv", base=Path("relative"))


@pytest.mark.parametrize(
    ("pattern", "root", "depth"),
    [
        ("/folder/*/*/*.txt", "/folder", 3),
        ("/data/in/x.csv", "/data/in", 1),
        ("/data/in/*.csv", "/data/in", 1),
        ("/data/2026/*/report.csv", "/data/2026", 2),
        ("/data/x?/in/*.csv", "/data", 3),
        ("/data/[ab]/in/*.csv", "/data", 3),
        ("/*/in/x.csv", "/", 3),
        ("/x.csv", "/", 1),
        ("/data/\\*/in/x.csv", "/data/*/in", 1),
        ("/data/./in/../out/*.csv", "/data/out", 1),
    ],
)
def test_root_and_depth(pattern: str, root: str, depth: int) -> None:
    glob = Glob(pattern)
    assert (glob.root, glob.depth) == (Path(root), depth)


def test_globs_compare_by_their_absolute_pattern() -> None:
    assert Glob("in/*.csv", base=Path("/a")) == Glob("/a/in/*.csv")
    assert len({Glob("/a//in/*.csv"), Glob("/a/in/*.csv")}) == 1
    assert repr(Glob("/a/*.csv")) == "Glob('/a/*.csv')"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("/data/**/*.csv", "'**' is not supported: patterns follow Go's filepath.Match, where '*' never crosses '/';"),
        ("/data/***", "write one '*' per directory level, like /data/*/*/*.csv"),
        ("", "empty pattern"),
        ("   ", "empty pattern"),
        ("/data/x\\", "trailing '\\' at column 8 escapes nothing: write '\\\\' for a literal backslash"),
        ("/data/[abc.csv", "unclosed '[' at column 7: a character class needs a closing ']'"),
        ("/data/[a\\", "unclosed '[' at column 7"),
        ("/data/[", "unclosed '[' at column 7"),
        ("/data/[^", "unclosed '[' at column 7"),
        ("/data/[]a].csv", "empty character class at column 7: write '\\]' for a literal ']'"),
        ("/data/[^].csv", "empty character class at column 7"),
        ("/data/[-a].csv", "'-' at column 8 must sit between two characters of a class"),
        ("/data/[a-].csv", "'-' at column 9 must sit between two characters of a class"),
        ("/data/[a-b-c].csv", "'-' at column 11 must sit between two characters"),
        ("/data/[z-a].csv", "range 'z-a' in the class at column 7 is backwards: write it low to high, 'a-z'"),
        ("/data/[a/b].csv", "the class at column 7 holds '/', which never matches"),
        ("/", "resolves to '/', which is no file"),
        ("/data/..", "resolves to '/'"),
    ],
)
def test_check_pattern_says_what_to_write(pattern: str, message: str) -> None:
    found = check_pattern(pattern)
    assert found is not None
    assert message in found
    with pytest.raises(ValueError) as raised:
        Glob(pattern, base=Path("/srv"))
    assert str(raised.value) == found


@pytest.mark.parametrize(
    "pattern", ["/data/*.csv", "in/*.csv", "/a/[a-z]/[^0-9]/[!x]?", "/data/\\**", "/data/a]b", "x", "/data/[\\]-\\^]"]
)
def test_check_pattern_accepts_valid_patterns(pattern: str) -> None:
    assert check_pattern(pattern) is None


def test_a_relative_pattern_may_climb_to_the_root_only_through_glob() -> None:
    assert check_pattern("..") is None  # it depends on the base, which check_pattern does not know
    with pytest.raises(ValueError, match="resolves to '/'"):
        Glob("..", base=Path("/srv"))


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("path", "when"),
    [
        ("/data/2026/11/22/x.csv", _utc(2026, 11, 22)),
        ("/data/2026/11/22/13/x.csv", _utc(2026, 11, 22, 13)),
        ("/data/2026/11/22/13.csv", _utc(2026, 11, 22, 13)),
        ("/data/2026/11/22/1300.csv", _utc(2026, 11, 22)),
        ("/data/2026/11/22/25/x.csv", _utc(2026, 11, 22)),
        ("/in/sales-2026-11-22T13.csv", _utc(2026, 11, 22, 13)),
        ("/in/sales-2026-11-22T13:04.csv", _utc(2026, 11, 22, 13, 4)),
        ("/in/sales-2026-11-22T13:04:05.123Z.csv", _utc(2026, 11, 22, 13, 4, 5)),
        ("/in/sales-2026-11-22T130405.csv", _utc(2026, 11, 22, 13, 4, 5)),
        ("/in/sales-2026-11-22T25.csv", _utc(2026, 11, 22)),
        ("/in/sales-2026-11-22.csv", _utc(2026, 11, 22)),
        ("/in/2026-11-22/x.csv", _utc(2026, 11, 22)),
        ("/in/dump_20261122T130000.json", _utc(2026, 11, 22, 13)),
        ("/in/dump_20261122T130405.json", _utc(2026, 11, 22, 13, 4, 5)),
        ("/in/20261122.csv", _utc(2026, 11, 22)),
        ("/in/abc20261122def", _utc(2026, 11, 22)),
        ("/in/readme.txt", None),
        ("/in/v12345678.bin", None),
        ("/in/2026-13-40.csv", None),
        ("/in/20260230.csv", None),
        ("/in/2024-02-29.csv", _utc(2024, 2, 29)),
        ("/in/1969-12-31.csv", None),
        ("/in/2201-01-01.csv", None),
        ("/in/2200-12-31.csv", _utc(2200, 12, 31)),
        ("/in/1970-01-01.csv", _utc(1970, 1, 1)),
        ("/in/120261122.csv", None),
        ("/in/202611221.csv", None),
        ("/in/1700000000.json", None),
        ("/in/2026/11.csv", None),
        ("/2026/01/01/export-2026-11-22.csv", _utc(2026, 11, 22)),
        ("/2026/11/22/13/export-2026-11-22.csv", _utc(2026, 11, 22, 13)),
        ("/2026/11/22/13/export-20261122T150000.csv", _utc(2026, 11, 22, 15)),
        ("/2026/11/21/13/export-2026-11-22.csv", _utc(2026, 11, 22)),
        ("/2026/11/22/export-2026-13-40.csv", _utc(2026, 11, 22)),
        ("/2026/11/22/2026/11/23/x", _utc(2026, 11, 23)),
        ("", None),
    ],
)
def test_path_time(path: str, when: datetime | None) -> None:
    assert path_time(path) == when


def test_path_time_is_utc() -> None:
    found = path_time("/in/2026-11-22.csv")
    assert found is not None
    assert found.tzinfo is UTC


@pytest.mark.parametrize(
    ("path", "meta"),
    [
        ("/data/in/x.csv", {"file": "/data/in/x.csv", "filename": "x.csv"}),
        ("/data//in/./x.csv", {"file": "/data/in/x.csv", "filename": "x.csv"}),
    ],
)
def test_file_meta(path: str, meta: dict[str, str]) -> None:
    assert file_meta(path) == meta


def test_file_meta_takes_a_relative_path_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert file_meta("in/x.csv") == {"file": f"{tmp_path}/in/x.csv", "filename": "x.csv"}
