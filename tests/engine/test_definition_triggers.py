"""What starts runs and how a schedule behaves, as every definition format writes it: the same values from
YAML, TOML and Python, the same mistakes in the same words, and a warning where a valid cron may mislead."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from jetdag.engine.definitions import load_yaml, validate_files
from jetdag.engine.definitions.tomlfile import load_toml, read_toml
from jetdag.engine.definitions.triggers import cron_warning
from jetdag.engine.definitions.yamlfile import read_yaml
from jetdag.engine.errors import DefinitionErrors, DefinitionWarning
from jetdag.engine.model import Catchup, Overlap, Trigger, TriggerRule
from jetdag.engine.workflow import Task, Workflow

ONE_TASK = "tasks:\n  - {name: a, handler: h}\n"


def here() -> int:
    return sys._getframe(1).f_lineno


def yaml_errors(text: str) -> list[str]:
    with pytest.raises(DefinitionErrors) as caught:
        load_yaml("wf.yaml", "name: wf\n" + text + ONE_TASK)
    return [str(e) for e in caught.value.errors]


def builder_errors(wf: Workflow) -> list[str]:
    with pytest.raises(DefinitionErrors) as caught:
        wf.spec()
    return [str(e) for e in caught.value.errors]


# --- schedule policies ----------------------------------------------------------------------------


def test_schedule_policies_are_the_same_from_yaml_and_python() -> None:
    text = """\
    name: wf
    schedule: "0 2 * * *"
    catchup: latest
    catchup_window: 6h
    overlap: cancel_previous
    config: {max_active_runs: 2}
    """
    from_yaml = load_yaml("wf.yaml", textwrap.dedent(text) + ONE_TASK)
    wf = Workflow(
        name="wf", schedule="0 2 * * *", catchup="latest", catchup_window="6h", overlap="cancel_previous",
        max_active_runs=2,
    )  # fmt: skip
    wf.add(Task("a", handler="h"))
    assert from_yaml == wf.spec()
    assert from_yaml.max_active_runs == 2
    assert from_yaml.triggers == (
        Trigger(cron="0 2 * * *", catchup=Catchup.LATEST, catchup_window=21600.0, overlap=Overlap.CANCEL_PREVIOUS),
    )


@pytest.mark.parametrize(
    ("written", "expected"),
    [("none", Catchup.NONE), ("latest", Catchup.LATEST), ("all", Catchup.ALL), ("true", Catchup.ALL),
     ("false", Catchup.NONE)],
)  # fmt: skip
def test_catchup_takes_a_policy_or_flowctls_boolean(written: str, expected: Catchup) -> None:
    spec = load_yaml("wf.yaml", f"name: wf\nschedule: '@daily'\ncatchup: {written}\n" + ONE_TASK)
    assert spec.triggers[0].catchup == expected
    wf = Workflow(name="wf", schedule="@daily", catchup={"true": True, "false": False}.get(written, written))
    wf.add(Task("a", handler="h"))
    assert wf.spec() == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "schedule: '@daily'\noverlap: skp\n",
            "wf.yaml:3:10: 'overlap' must be one of allow, skip, buffer_one, cancel_previous, got 'skp' "
            "(did you mean 'skip'?)",
            id="overlap",
        ),
        pytest.param(
            "schedule: '@daily'\ncatchup: Latest\n",
            "wf.yaml:3:10: 'catchup' must be none, latest or all (or true for all, false for none), got 'Latest' "
            "(did you mean 'latest'?)",
            id="catchup",
        ),
        pytest.param(
            "schedule: '@daily'\ncatchup_window: 0s\n",
            "wf.yaml:3:17: 'catchup_window' must be a duration above zero, like '6h' or '7d', got '0s'",
            id="zero-window",
        ),
        pytest.param(
            "schedule: '@daily'\ncatchup_window: 1x\n",
            "wf.yaml:3:17: 'catchup_window': invalid duration '1x': use a number with ms, s, m, h or d, "
            "like '90s' or '1h30m'",
            id="bad-window",
        ),
        pytest.param(
            "config: {max_active_runs: 0}\n",
            "wf.yaml:2:27: 'max_active_runs' in config must be an integer >= 1, got 0",
            id="max-active-runs",
        ),
        pytest.param(
            "schedule: '0 25 * * *'\ntimezone: UTC\n",
            "wf.yaml:2:11: 'schedule': invalid cron expression '0 25 * * *': hour field '25' is not valid",
            id="only-the-bad-schedule",  # not also "'timezone' applies to 'schedule', which is not set"
        ),
    ],
)
def test_each_policy_mistake_is_pointed_at(text: str, expected: str) -> None:
    assert yaml_errors(text) == [expected]


def test_builder_policy_mistakes_point_at_the_workflow_line() -> None:
    wf, line = Workflow(name="wf", overlap="skp", catchup_window=0, max_active_runs=0), here()
    wf.add(Task("a", handler="h"))
    assert builder_errors(wf) == [
        f"{__file__}:{line}:1: 'catchup_window' in workflow 'wf' must be a duration above zero, like '6h' or "
        "'7d', got 0",
        f"{__file__}:{line}:1: 'overlap' in workflow 'wf' must be one of allow, skip, buffer_one, cancel_previous, "
        "got 'skp' (did you mean 'skip'?)",
        f"{__file__}:{line}:1: 'catchup_window' in workflow 'wf' applies to 'schedule', which is not set",
        f"{__file__}:{line}:1: 'overlap' in workflow 'wf' applies to 'schedule', which is not set",
        f"{__file__}:{line}:1: 'max_active_runs' in workflow 'wf' must be an integer >= 1, got 0",
    ]


def test_toml_takes_max_active_runs_at_the_top() -> None:
    spec = load_toml("wf.toml", 'max_active_runs = 1\n[[Phase]]\ntask = "a"\nrule = "cron=0 2 * * *"\n')
    assert spec.max_active_runs == 1
    with pytest.raises(DefinitionErrors, match=r"^wf\.toml:1:19: 'max_active_runs' must be an integer >= 1, got 0$"):
        load_toml("wf.toml", 'max_active_runs = 0\n[[Phase]]\ntask = "a"\n')


# --- six fields: the seconds first, in every format -----------------------------------------------


def test_six_fields_are_read_seconds_first_and_kept_as_written_in_every_format() -> None:
    written = "15 30 2 * * 1-5"  # 02:30:15 on weekdays
    yaml = load_yaml("wf.yaml", f"name: wf\nschedule: '  {written} '\n" + ONE_TASK)
    toml = load_toml("wf.toml", f'[[Phase]]\ntask = "a"\nrule = "cron={written}"\n')
    wf = Workflow(name="wf", schedule=written)
    wf.add(Task("a", handler="h"))
    assert yaml.triggers[0].cron == toml.triggers[0].cron == wf.spec().triggers[0].cron == written


@pytest.mark.parametrize(
    ("cron", "field"),
    [("61 0 1 * * *", "second '61'"), ("0 61 1 * * *", "minute '61'"), ("0 0 1 * * 8", "day-of-week '8'"),
     ("0 0 1 * 13 *", "month '13'"), ("0 61 * * *", "hour '61'"), ("0 * 32 * *", "day-of-month '32'")],
)  # fmt: skip
def test_a_bad_field_is_named_in_the_order_it_is_written(cron: str, field: str) -> None:
    name, value = field.split()
    expected = f"invalid cron expression {cron!r}: {name} field {value} is not valid"
    assert yaml_errors(f"schedule: '{cron}'\n") == [f"wf.yaml:2:11: 'schedule': {expected}"]
    with pytest.raises(DefinitionErrors, match=f"'cron' in phase 'a': {expected}$".replace("*", r"\*")):
        load_toml("wf.toml", f'[[Phase]]\ntask = "a"\nrule = "cron={cron}"\n')


# --- a cron read two ways: the warning ------------------------------------------------------------


def test_a_cron_valid_both_ways_gets_a_warning_that_shows_both_readings() -> None:
    assert cron_warning("0 0 1 * * *") == (
        "'0 0 1 * * *' has 6 fields: jetdag reads the seconds first and fires it at 2026-01-01 01:00:00, "
        "2026-01-02 01:00:00, 2026-01-03 01:00:00, …; read with the seconds last, as croniter writes it, it would "
        "fire at 2026-01-01 00:00:00, 00:00:01, 00:00:02, …: write '0 1 * * *' (5 fields) to keep jetdag's "
        "reading, or '* 0 0 1 * *' for the seconds-last reading"
    )
    # With seconds other than 0, five fields cannot say it: only the other reading is offered.
    assert cron_warning("30 0 */2 * * *") == (
        "'30 0 */2 * * *' has 6 fields: jetdag reads the seconds first and fires it at 2026-01-01 00:00:30, "
        "02:00:30, 04:00:30, …; read with the seconds last, as croniter writes it, it would fire at 2026-01-01 "
        "00:30:00, 00:30:01, 00:30:02, …: write '* 30 0 */2 * *' for the seconds-last reading"
    )


@pytest.mark.parametrize(
    "cron",
    ["0 1 * * *", "@daily", "* * * * * *", "0 30 2 * * 1-5", "0 0 0 30 2 *"],
    ids=["five-fields", "alias", "same-both-ways", "invalid-seconds-last", "never-fires"],
)
def test_a_cron_with_one_reading_gets_no_warning(cron: str) -> None:
    assert cron_warning(cron) is None


def test_the_warning_points_at_the_schedule_in_yaml_and_python_and_toml_gets_none(tmp_path: Path) -> None:
    yaml = read_yaml("wf.yaml", "name: wf\nschedule: '0 0 1 * * *'\n" + ONE_TASK)
    assert [(w.line, w.column) for w in yaml.warnings] == [(2, 11)]
    # flowlord has always read the seconds first: in its format the string never meant anything else.
    toml = read_toml("wf.toml", '[[Phase]]\ntask = "a"\nrule = "offset=-1h&cron= 0 0 1 * * *"\n')
    assert toml.warnings == ()
    source = tmp_path / "flows.py"
    source.write_text(
        "from jetdag.engine.workflow import Task, Workflow\n\n"
        "wf = Workflow(name='py', schedule='0 0 1 * * *')\n"
        "wf.add(Task('a', handler='h'))\n"
    )
    found = validate_files([source])
    assert (found.specs[0].name, found.errors) == ("py", [])
    [warning] = found.warnings
    assert (warning.path, warning.line, warning.column) == (str(source), 3, 1)
    assert str(warning) == f"{source}:3:1: warning: {cron_warning('0 0 1 * * *')}"


def test_validate_files_gives_the_warnings_of_the_workflows_it_keeps(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("name: wf\nschedule: '0 0 1 * * *'\n" + ONE_TASK)
    (tmp_path / "two.yaml").write_text("name: wf\nschedule: '0 0 2 * * *'\n" + ONE_TASK)  # taken: left out
    specs, errors, warnings = validate_files([tmp_path / "one.yaml", tmp_path / "two.yaml"])
    assert ([s.name for s in specs], len(errors)) == (["wf"], 1)
    assert warnings == [DefinitionWarning(str(tmp_path / "one.yaml"), 2, 11, cron_warning("0 0 1 * * *") or "")]


# --- trigger rules, globs, subjects ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "rule"),
    [("allSuccessful", TriggerRule.ALL_SUCCESS), ("allSuccess", TriggerRule.ALL_SUCCESS),
     ("allDone", TriggerRule.ALL_DONE), ("allFailed", TriggerRule.ALL_FAILED), ("oneSuccess", TriggerRule.ONE_SUCCESS),
     ("oneFailed", TriggerRule.ONE_FAILED), ("noneFailed", TriggerRule.NONE_FAILED)],
)  # fmt: skip
def test_goflow_rule_spellings_are_read(written: str, rule: TriggerRule) -> None:
    spec = load_yaml("wf.yaml", f"name: wf\ntasks:\n  - {{name: a, handler: h, trigger_rule: {written}}}\n")
    wf = Workflow(name="wf")
    wf.add(Task("a", handler="h", trigger_rule=written))
    assert spec.tasks[0].trigger_rule == wf.spec().tasks[0].trigger_rule == rule


def test_an_unknown_rule_lists_the_canonical_names() -> None:
    with pytest.raises(DefinitionErrors) as caught:
        load_yaml("wf.yaml", "name: wf\ntasks:\n  - {name: a, handler: h, trigger_rule: all_sucess}\n")
    assert [e.message for e in caught.value.errors] == [
        "'trigger_rule' in task 'a' must be one of all_success, all_done, all_failed, one_success, one_failed, "
        "none_failed, got 'all_sucess' (did you mean 'all_success'?)"
    ]


DOUBLE_STAR = (
    "'**' is not supported: patterns follow Go's filepath.Match, where '*' never crosses '/'; write one '*' per "
    "directory level, like /data/*/*/*.csv"
)


def test_globs_follow_go_in_every_format() -> None:
    assert yaml_errors("files: [in/*.csv, '/data/**/*.csv']\n") == [
        f"wf.yaml:2:8: 'files': '/data/**/*.csv': {DOUBLE_STAR}"
    ]
    with pytest.raises(DefinitionErrors) as caught:
        load_toml("wf.toml", '[[Phase]]\ntask = "a"\nrule = "files=/in/**"\n')
    assert [str(e) for e in caught.value.errors] == [f"wf.toml:3:15: 'files' in phase 'a': '/in/**': {DOUBLE_STAR}"]
    wf, line = Workflow(name="wf", files="in/[a"), here()
    wf.add(Task("a", handler="h"))
    assert builder_errors(wf) == [
        f"{__file__}:{line}:1: 'files' in workflow 'wf': 'in/[a': unclosed '[' at column 4: a character class "
        "needs a closing ']'; write '\\[' for a literal '['"
    ]


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ("jd.submit.x", "is under 'jd.', which jetdag and NATS keep for their own traffic"),
        ("$KV.jd_runs.x", "is under '$', which jetdag and NATS keep for their own traffic"),
        ("_INBOX.abc", "is under '_INBOX.', which jetdag and NATS keep for their own traffic"),
        (">", "starts with a wildcard, so it would also match jetdag's and NATS's own subjects"),
        ("*.created", "starts with a wildcard, so it would also match jetdag's and NATS's own subjects"),
    ],
)
def test_jetdags_and_natss_own_subjects_are_refused(subject: str, why: str) -> None:
    [message] = yaml_errors(f"on_message: '{subject}'\n")
    assert message.startswith(f"wf.yaml:2:13: 'on_message': subject {subject!r} {why} ('jd.…', '$…', ")
    wf = Workflow(name="wf", on_message=subject)
    wf.add(Task("a", handler="h"))
    [from_python] = builder_errors(wf)
    assert from_python.endswith(message.split("'on_message': ", 1)[1])


def test_subjects_of_ones_own_pass() -> None:
    spec = load_yaml("wf.yaml", "name: wf\non_message: orders.>\n" + ONE_TASK)
    assert spec.triggers == (Trigger(subject="orders.>"),)
