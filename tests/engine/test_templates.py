"""Templates: time, meta, param and result keys; escapes; typed whole values; messages that say what to fix."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetdag.engine.templates import (
    Key,
    Scope,
    TemplateError,
    as_require,
    check,
    has_keys,
    keys,
    present,
    problems,
    render,
    strings,
)

MOMENT = datetime(2026, 1, 23, 4, 5, 6, tzinfo=UTC)
SCOPE = Scope(
    logical_time=MOMENT,
    params={"count": 3, "files": ["a.csv", "b.csv"], "date": "2026-01-23", "none": None, "empty": ""},
    meta={"file": "s3://in/x.csv", "flag": True, "nothing": None, "blank": [], "zero": 0},
    results={"extract": {"rows": 12, "stats": {"rows": 7, "bad": None}, "list": [1, 2]}, "count": [1, 2, 3]},
)


@pytest.mark.parametrize(
    ("text", "rendered"),
    [("{yyyy}", "2026"), ("{mm}", "01"), ("{dd}", "23"), ("{hh}", "04"), ("{ts}", "20260123T040506")],
)
def test_time_keys_render_the_logical_time(text: str, rendered: str) -> None:
    assert render(text, SCOPE) == rendered


def test_time_keys_keep_the_wall_clock_of_their_zone() -> None:
    new_york = datetime(2025, 12, 31, 22, 30, 0, tzinfo=timezone(timedelta(hours=-5)))
    scope = Scope(logical_time=new_york)
    assert render("?date={yyyy}-{mm}-{dd}&hour={hh}&ts={ts}", scope) == "?date=2025-12-31&hour=22&ts=20251231T223000"


def test_a_four_digit_year_is_padded() -> None:
    assert render("{yyyy}/{ts}", Scope(logical_time=datetime(987, 6, 5, tzinfo=UTC))) == "0987/09870605T000000"


def test_meta_param_and_result_keys_inside_text() -> None:
    text = "{meta:file} n={param:count} on {param:date} rows={result:extract.rows} of {result:extract.stats.rows}"
    assert render(text, SCOPE) == "s3://in/x.csv n=3 on 2026-01-23 rows=12 of 7"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{param:count}", 3),
        ("{param:files}", ["a.csv", "b.csv"]),
        ("{param:none}", None),
        ("{meta:flag}", True),
        ("{result:extract.stats}", {"rows": 7, "bad": None}),
        ("{result:count}", [1, 2, 3]),
        ("{result:extract}", {"rows": 12, "stats": {"rows": 7, "bad": None}, "list": [1, 2]}),
        ("{yyyy}", "2026"),
    ],
)
def test_a_string_that_is_one_key_keeps_the_value_type(text: str, value: Any) -> None:
    assert render(text, SCOPE) == value


def test_values_inside_longer_text_are_written_as_text() -> None:
    assert render("[{param:none}]", SCOPE) == "[]"
    assert render("flag={meta:flag}", SCOPE) == "flag=true"
    assert render("{meta:flag}/{result:extract.stats.bad}/{meta:zero}", SCOPE) == "true//0"
    assert render("stats={result:extract.stats}", SCOPE) == 'stats={"rows":7,"bad":null}'
    assert render("files={param:files}", SCOPE) == 'files=["a.csv","b.csv"]'
    assert render("false={param:f}", Scope(MOMENT, params={"f": False})) == "false=false"


def test_payloads_render_values_through_dicts_and_lists_but_not_dict_keys() -> None:
    payload = {
        "argv": ["load", "{param:date}", "--rows={result:extract.rows}"],
        "env": {"DATE": "{yyyy}{mm}{dd}", "N": "{param:count}"},
        "{param:date}": "kept",
        "retries": 3,
        "dry": False,
        "nested": [{"files": "{param:files}"}, None],
    }
    assert render(payload, SCOPE) == {
        "argv": ["load", "2026-01-23", "--rows=12"],
        "env": {"DATE": "20260123", "N": 3},
        "{param:date}": "kept",
        "retries": 3,
        "dry": False,
        "nested": [{"files": ["a.csv", "b.csv"]}, None],
    }


def test_render_leaves_its_input_and_the_scope_alone() -> None:
    payload = {"argv": ["{param:files}", "{yyyy}"], "env": {"F": "{meta:file}"}}
    before = copy.deepcopy(payload)
    rendered = render(payload, SCOPE)
    assert payload == before
    rendered["argv"][0].append("c.csv")
    assert SCOPE.params["files"] == ["a.csv", "b.csv"]


def test_none_and_scalars_render_as_themselves() -> None:
    assert render(None, SCOPE) is None
    assert render(4.5, SCOPE) == 4.5
    assert render(("{param:count}", "x"), SCOPE) == (3, "x")


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("{{yyyy}}", "{yyyy}"),
        ("{{{yyyy}}}", "{2026}"),
        ("a }} b {{", "a } b {"),
        ("${HOME}/x", "${HOME}/x"),
        ("${{yyyy}}", "${yyyy}"),
        ("$${yyyy}", "$${yyyy}"),
        ("awk '{print $1}' {yyyy}", "awk '{print $1}' 2026"),
        ('{"a": 1, "b": [2]}', '{"a": 1, "b": [2]}'),
        ('{"day": "{dd}"}', '{"day": "23"}'),
        ("x{3} {1,2} {} { } {a b} {meta:} {meta: x}", "x{3} {1,2} {} { } {a b} {meta:} {meta: x}"),
        ("lone } and { braces", "lone } and { braces"),
    ],
)
def test_escapes_and_text_that_is_not_a_key(text: str, rendered: str) -> None:
    assert render(text, SCOPE) == rendered


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{yyy}", "unknown template key '{yyy}' (did you mean '{yyyy}'?)"),
        ("{YYYY}", "unknown template key '{YYYY}' (did you mean '{yyyy}'?)"),
        ("{parm:x}", "unknown template key '{parm:x}' (did you mean '{param:...}'?)"),
        ("{results:extract.rows}", "unknown template key '{results:extract.rows}' (did you mean '{result:...}'?)"),
        ("{metaa}", "unknown template key '{metaa}' (did you mean '{meta:...}'?)"),
        (
            "{hour}",
            "unknown template key '{hour}' (known keys: {yyyy} {mm} {dd} {hh} {ts} {meta:...} {param:...} "
            "{result:...}; write '{{' and '}}' for literal braces)",
        ),
        ("{meta}", "template key '{meta}' needs a name: write '{meta:key}'"),
        ("{param}", "template key '{param}' needs a name: write '{param:key}'"),
        ("{result}", "template key '{result}' needs a name: write '{result:task.key}'"),
        ("{yyyy:utc}", "template key '{yyyy:utc}' takes no name: write '{yyyy}'"),
        (
            "{result:a/b}",
            "template key '{result:a/b}' needs a task name and dotted key names: write '{result:task.key}'",
        ),
        (
            "{result:extract..rows}",
            "template key '{result:extract..rows}' needs a task name and dotted key names: write '{result:task.key}'",
        ),
    ],
)
def test_bad_keys_say_what_to_write(text: str, message: str) -> None:
    assert problems(f"a {text} b") == [message]
    with pytest.raises(TemplateError) as exc:
        keys(text)
    assert str(exc.value) == message
    with pytest.raises(TemplateError) as exc:
        render({"argv": [text]}, SCOPE)
    assert str(exc.value) == message


def test_problems_lists_every_bad_key_and_keys_names_the_first() -> None:
    assert problems("{yyy}-{mm}-{meta}") == [
        "unknown template key '{yyy}' (did you mean '{yyyy}'?)",
        "template key '{meta}' needs a name: write '{meta:key}'",
    ]
    with pytest.raises(TemplateError, match=r"^unknown template key '\{yyy\}'"):
        keys("{yyy}-{mm}-{meta}")
    assert problems("fine {yyyy} {{x}}") == []


def test_keys_are_parsed_with_their_parts_and_offsets() -> None:
    assert keys("d={yyyy} {{x}} {meta:file} {param:a.b} {result:topic:job-1.stats.rows} {result:t_2}") == [
        Key("{yyyy}", "time", "yyyy", (), 2),
        Key("{meta:file}", "meta", "file", (), 15),
        Key("{param:a.b}", "param", "a.b", (), 27),
        Key("{result:topic:job-1.stats.rows}", "result", "topic:job-1", ("stats", "rows"), 39),
        Key("{result:t_2}", "result", "t_2", (), 71),
    ]
    assert keys("no keys ${HOME}") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{meta:missing}",
            "template key '{meta:missing}': the run has no meta 'missing' (it has: blank, file, flag, nothing, zero)",
        ),
        ("x={param:x}", "template key '{param:x}': the run has no param 'x' (it has: count, date, empty, files, none)"),
        ("{result:extract.nope}", "template key '{result:extract.nope}': task 'extract' has no result key 'nope'"),
        (
            "{result:extract.stats.x}",
            "template key '{result:extract.stats.x}': task 'extract' has no result key 'stats.x'",
        ),
        (
            "{result:extract.rows.x}",
            "template key '{result:extract.rows.x}': task 'extract' has no result key 'rows.x':"
            " 'rows' is a number, not an object",
        ),
        (
            "{result:count.x}",
            "template key '{result:count.x}': task 'count' has no result key 'x': its result is a list, not an object",
        ),
        ("{result:load.rows}", "template key '{result:load.rows}': task 'load' has not produced a result"),
        ("{result:load}", "template key '{result:load}': task 'load' has not produced a result"),
    ],
)
def test_keys_that_cannot_be_filled_say_what_is_missing(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as exc:
        render(text, SCOPE)
    assert str(exc.value) == message


def test_an_empty_scope_says_it_has_none() -> None:
    with pytest.raises(TemplateError) as exc:
        render("{param:x}", Scope(MOMENT))
    assert str(exc.value) == "template key '{param:x}': the run has no param 'x' (it has none)"


def test_long_name_lists_are_cut_short() -> None:
    with pytest.raises(TemplateError) as exc:
        render("{meta:zz}", Scope(MOMENT, meta={f"k{i:02d}": i for i in range(13)}))
    assert str(exc.value) == (
        "template key '{meta:zz}': the run has no meta 'zz' "
        "(it has: k00, k01, k02, k03, k04, k05, k06, k07, k08, k09, and 3 more)"
    )


def test_strings_yields_every_string_value_with_its_path() -> None:
    payload = {"argv": ["a", 1, "b"], "env": {"DATE": "d"}, "a b": "s", 7: "n", "t": ("x",), "k": None}
    assert list(strings(payload)) == [
        ("argv[0]", "a"),
        ("argv[2]", "b"),
        ("env.DATE", "d"),
        ("['a b']", "s"),
        ("[7]", "n"),
        ("t[0]", "x"),
    ]
    assert list(strings("top")) == [("", "top")]
    assert list(strings(["x"])) == [("[0]", "x")]
    assert list(strings(None)) == []


def test_check_finds_undeclared_params_and_results_that_are_not_upstream() -> None:
    payload = {
        "argv": ["load", "{param:dat} {result:extrct.rows}"],
        "env": {"D": "{yyy}", "OK": "{param:date} {result:extract.stats.rows} {meta:anything}"},
        "all": "{result:other}",
    }
    assert check(payload, params=["date"], upstream=["extract"], where="payload of task 'load'") == [
        "template key '{param:dat}' in payload.argv[1] of task 'load': the workflow declares no param 'dat'"
        " (did you mean '{param:date}'?)",
        "template key '{result:extrct.rows}' in payload.argv[1] of task 'load': 'extrct' is not upstream of this task"
        " (did you mean '{result:extract.rows}'?)",
        "unknown template key '{yyy}' in payload.env.D of task 'load' (did you mean '{yyyy}'?)",
        "template key '{result:other}' in payload.all of task 'load': 'other' is not upstream of this task",
    ]


def test_check_when_the_workflow_has_no_params() -> None:
    assert check("{param:day}", params=(), upstream=(), where="template of task 'load'") == [
        "template key '{param:day}' in template of task 'load': the workflow declares no params; add 'day' under params"
    ]


def test_check_joins_paths_of_top_level_lists_and_reports_a_repeated_key_once() -> None:
    assert check(["x", "{meta} {meta}"], params=(), upstream=(), where="payload of task 't'") == [
        "template key '{meta}' in payload[1] of task 't' needs a name: write '{meta:key}'"
    ]


def test_check_passes_good_values() -> None:
    payload = {"q": "?d={yyyy}-{mm}-{dd}&f={meta:file}&n={param:n}&r={result:a:b.rows}", "shell": "${HOME} {print $1}"}
    assert check(payload, params=["n"], upstream=["a:b"], where="payload of task 't'") == []
    assert check(None, params=(), upstream=(), where="payload of task 't'") == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{yyyy}", True),
        ({"a": ["x", "{meta:file}"]}, True),
        ("{{literal}}", True),
        ("only }} closes", True),
        ("{unknown}", True),
        ('${HOME} {print $1} {"a": 1}', False),
        ({"{meta:file}": "key, not value"}, False),
        ([1, None, "plain"], False),
        (None, False),
    ],
)
def test_has_keys_is_true_when_rendering_could_change_the_value(value: Any, expected: bool) -> None:
    assert has_keys(value) is expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("meta:file", True),
        ("{meta:file}", True),
        ("  meta:file ", True),
        ("param:count", True),
        ("meta:zero", True),
        ("meta:flag", True),
        ("result:extract.rows", True),
        ("yyyy", True),
        ("meta:missing", False),
        ("meta:nothing", False),
        ("param:empty", False),
        ("meta:blank", False),
        ("result:extract.stats.bad", False),
        ("result:extract.nope", False),
        ("result:load", False),
        ("result:extract.rows.x", False),
    ],
)
def test_present_is_true_for_non_empty_values(ref: str, expected: bool) -> None:
    assert present(ref, SCOPE) is expected


def test_present_counts_empty_dicts_as_missing() -> None:
    assert present("result:t", Scope(MOMENT, results={"t": {}})) is False


@pytest.mark.parametrize(
    ("ref", "braced"), [("meta:file", "{meta:file}"), ("{param:date}", "{param:date}"), ("result:a.b", "{result:a.b}")]
)
def test_as_require_writes_the_braced_form(ref: str, braced: str) -> None:
    assert as_require(ref) == braced


NOT_ONE = " is not one template key: write one like 'meta:file' or '{meta:file}'"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("meta", "template key '{meta}' needs a name: write '{meta:key}'"),
        ("metta:file", "unknown template key '{metta:file}' (did you mean '{meta:...}'?)"),
        ("a {meta:x}", "'a {meta:x}'" + NOT_ONE),
        ("{meta:x} {meta:y}", "'{meta:x} {meta:y}'" + NOT_ONE),
        ("{{meta:x}}", "'{{meta:x}}'" + NOT_ONE),
        ("", "''" + NOT_ONE),
        (3, "expected one template key like 'meta:file', got 3"),
    ],
)
def test_require_entries_must_be_one_valid_key(ref: Any, message: str) -> None:
    with pytest.raises(TemplateError) as exc:
        as_require(ref)
    assert str(exc.value) == message
    with pytest.raises(TemplateError) as exc:
        present(ref, SCOPE)
    assert str(exc.value) == message


TEXT = st.text(alphabet=st.sampled_from("{}$:. aZ_y9\n")) | st.text()


@given(st.text().filter(lambda s: "{" not in s and "}" not in s))
def test_text_without_braces_renders_unchanged(text: str) -> None:
    assert render(text, SCOPE) == text
    assert not has_keys(text)


@given(TEXT)
def test_escaping_every_brace_renders_the_text_back(text: str) -> None:
    escaped = text.replace("{", "{{").replace("}", "}}")
    assert render(escaped, SCOPE) == text
    assert keys(escaped) == []
    assert problems(escaped) == []


def test_a_result_stored_by_reference_passes_whole_and_nothing_else() -> None:
    ref = {"$blob": "R1.big.1.result", "size": 5_000_000}
    scope = Scope(logical_time=MOMENT, results={"big": ref})
    assert render({"data": "{result:big}"}, scope) == {"data": ref}  # the worker resolves it
    for text in ("{result:big.rows}", "rows: {result:big}"):
        with pytest.raises(TemplateError, match=r"task 'big''s result is over 65,536 bytes and is stored by reference"):
            render(text, scope)
