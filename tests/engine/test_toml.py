"""flowlord workflow files: `[[Phase]]` tables read into the one model, every mistake pointed at."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from jetdag.engine.definitions import load_file, validate_files
from jetdag.engine.definitions.tomlfile import load_toml, read_toml
from jetdag.engine.errors import DefinitionErrors
from jetdag.engine.model import Batch, BatchBy, RetryPolicy, TaskSpec, Trigger, WorkflowSpec

FLOWLORD = Path(__file__).parent / "flowlord"
"""The README's examples, copied verbatim, one file each."""


def errors_of(text: str, name: str = "wf.toml") -> list[str]:
    with pytest.raises(DefinitionErrors) as caught:
        load_toml(name, textwrap.dedent(text))
    return [str(e) for e in caught.value.errors]


@pytest.mark.parametrize(
    "name",
    ["workflow", "cron", "files", "require_with_parent", "batch_meta", "batch_meta_file", "batch_lastweek_quoted"],
)
def test_the_readme_examples_load(name: str) -> None:
    spec = load_toml(FLOWLORD / f"{name}.toml")
    assert (spec.name, spec.title) == (name, "")


def test_the_readme_workflow_maps_field_by_field() -> None:
    spec, at, warnings = read_toml(FLOWLORD / "workflow.toml")
    assert warnings == ()
    assert spec == WorkflowSpec(
        name="workflow",
        tasks=(
            TaskSpec(
                name="topic_name",
                handler="topic_name",
                queue="topic_name",
                retry=RetryPolicy(max_attempts=4),
                template="?date={yyyy}-{mm}-{dd}",
                job="t2",
            ),
            TaskSpec(
                name="task1",
                handler="task1",
                queue="task1",
                depends_on=("topic_name",),
                retry=RetryPolicy(max_attempts=4, initial_delay=30.0),
                template="?hour={yyyy}-{mm}-{dd}T{hh}",
            ),
        ),
        triggers=(Trigger(cron="0 * * * *", offset=-14400.0, start=("topic_name",)),),
    )
    assert (at.line, at.column) == (2, 8)


def test_flowlord_cron_has_its_seconds_first() -> None:
    spec, _, warnings = read_toml(FLOWLORD / "cron.toml")
    # `0 0 1 * * *` is second 0, minute 0, hour 1, kept as written (engine.cron reads it). `Offset` is `offset`.
    assert spec.triggers == (Trigger(cron="0 0 1 * * *", offset=-21600.0, start=("topic",)),)
    # Valid with the seconds last too, but flowlord never read it so: no warning in this format (YAML warns).
    assert warnings == ()


def test_files_rule_and_topic_job_tasks() -> None:
    files = load_toml(FLOWLORD / "files.toml")
    assert files.triggers == (Trigger(files=("/folder/*/*/*.txt",), start=("topic",)),)
    assert files.tasks[0].template == "{meta:file}?opt=true"
    spec = load_toml(FLOWLORD / "require_with_parent.toml")
    assert spec.tasks[1] == TaskSpec(
        name="child:job",
        handler="child",
        queue="child",
        depends_on=("parent:job",),
        require=("{meta:file}",),
        template="{meta:file}",
        job="job",
    )


def test_the_readme_require_example_alone_misses_its_parent() -> None:
    # The README shows the child phase only; its parent is another phase of the same file in practice.
    with pytest.raises(DefinitionErrors) as caught:
        load_toml(FLOWLORD / "require.toml")
    assert [(e.line, e.column, e.message) for e in caught.value.errors] == [
        (5, 13, "task 'child:job' depends on unknown task 'parent:job'")
    ]


def test_batching_by_meta_rows_by_file_and_by_time() -> None:
    [meta] = load_toml(FLOWLORD / "batch_meta.toml").triggers
    assert meta == Trigger(
        cron="0 1 2 * * *",
        batch=Batch(meta={"name": ("a", "b", "c"), "value": ("1", "2", "3")}),
        start=("worker:job-meta",),
    )
    [meta_file] = load_toml(FLOWLORD / "batch_meta_file.toml").triggers
    assert meta_file.batch == Batch(meta_file="data.json")
    assert meta_file.cron == "0 5 5 * * *"
    spec = load_toml(FLOWLORD / "batch_lastweek_quoted.toml")
    assert spec.triggers == (
        Trigger(cron="0 7 7 * * *", batch=Batch(span=-604800.0, by=BatchBy.DAY), start=("worker:lastweek",)),
    )
    assert (spec.tasks[0].queue, spec.tasks[0].job) == ("worker", "lastweek")


def test_meta_accepts_equals_and_hour_steps() -> None:
    spec = load_toml(
        "wf.toml",
        '[[Phase]]\ntask = "w"\nrule = "files=/in/*.csv&meta=name=a,b|value:1,2&for=-6h&by=hour&no_alert"\n',
    )
    assert spec.triggers[0].batch == Batch(
        span=-21600.0, by=BatchBy.HOUR, meta={"name": ("a", "b"), "value": ("1", "2")}
    )
    assert spec.tasks[0].no_alert is True


def test_the_readme_last_week_example_is_not_valid_toml() -> None:
    # Its rule string lacks the closing quote and its template is unquoted: flowlord's parser rejects it too.
    with pytest.raises(DefinitionErrors) as caught:
        load_toml(FLOWLORD / "batch_lastweek.toml")
    [error] = caught.value.errors
    assert (error.line, error.column, error.message) == (5, 40, "invalid TOML: Illegal character '\\n'")


def test_name_and_description_override_the_file_name() -> None:
    spec, at, _ = read_toml("x.toml", 'name = "Nightly Report"\ndescription = "d"\n[[ Phase ]]\ntask = "a"\n')
    assert (spec.name, spec.title, spec.description, at.line, at.column) == (
        "Nightly-Report",
        "Nightly Report",
        "d",
        1,
        8,
    )
    assert load_toml("my flow.toml", '[[Phase]]\ntask = "a"\n').name == "my-flow"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            depends_on = "b"
            """,
            "wf.toml:3:1: unknown field 'depends_on' in phase 'a' (did you mean 'dependsOn'?)",
            id="unknown-phase-key",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "cron=0 * * * *&ofset=-4h"
            """,
            "wf.toml:3:24: unknown rule key 'ofset' in phase 'a' (did you mean 'offset'?)",
            id="unknown-rule-key",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "cron=0 0 25 * * *"
            """,
            "wf.toml:3:14: 'cron' in phase 'a': invalid cron expression '0 0 25 * * *': hour field '25' is not valid",
            id="bad-cron-field",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "cron=61 0 1 * * *"
            """,
            "wf.toml:3:14: 'cron' in phase 'a': invalid cron expression '61 0 1 * * *': second field '61' is not valid",
            id="bad-cron-seconds",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "cron=* * * *"
            """,
            "wf.toml:3:14: 'cron' in phase 'a': invalid cron expression '* * * *': use 5 fields "
            "(minute hour day-of-month month day-of-week), 6 with the seconds first, or @daily",
            id="cron-field-count",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "retry_delay=30x"
            """,
            "wf.toml:3:21: 'retry_delay' in phase 'a': invalid duration '30x': "
            "use a number with ms, s, m, h or d, like '90s' or '1h30m'",
            id="bad-duration",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "cron=0 * * * *&by=day"
            """,
            "wf.toml:3:24: 'by' needs 'for' in the same rule: it steps through the span 'for' gives",
            id="by-without-for",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "files=*.csv&for=-1d&by=week"
            """,
            "wf.toml:3:32: 'by' in phase 'a' must be one of hour, day, month, got 'week'",
            id="bad-by",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "cron=0 * * * *&meta=name:a,b,c|value:1,2"
            """,
            "wf.toml:3:29: 'meta' in phase 'a': every list needs the same number of values, one per run: "
            "name has 3, value has 2",
            id="unequal-meta",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "load"

            [[Phase]]
            task = "b"
            dependsOn = "lod"
            """,
            "wf.toml:6:13: task 'b' depends on unknown task 'lod' (did you mean 'load'?)",
            id="unknown-depends-on",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "x"
            [[Phase]]
            task = "b"
            dependsOn = "c"
            [[Phase]]
            task = "a"
            dependsOn = "b"
            [[Phase]]
            task = "c"
            dependsOn = "a"
            """,
            "wf.toml:3:1: cycle: b -> a -> c -> b",
            id="cycle",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            [[Phase]]
            task = "a"
            """,
            "wf.toml:4:8: duplicate task name 'a' (first defined at line 2)",
            id="duplicate-task",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            retry = "3"
            """,
            "wf.toml:3:9: 'retry' in phase 'a' must be an integer >= 0, got '3'",
            id="retry-not-int",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            retry = -1
            """,
            "wf.toml:3:9: 'retry' in phase 'a' must be an integer >= 0, got -1",
            id="retry-negative",
        ),
        pytest.param(
            """\
            [[Phase]]
            rule = "cron=0 * * * *"
            """,
            "wf.toml:1:1: missing required field 'task' in phase #1",
            id="missing-task",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a b"
            """,
            "wf.toml:2:8: invalid task name 'a b': use only letters, digits, '_', '-' and ':'",
            id="bad-task-name",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = ":job"
            """,
            "wf.toml:2:8: 'task' in phase ':job': the topic before ':' is empty",
            id="no-topic",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "offset=-4h"
            """,
            "wf.toml:3:9: 'offset' needs 'cron' or 'files' in the same rule",
            id="offset-without-cron",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "meta-file=rows.json"
            """,
            "wf.toml:3:9: 'meta-file' needs 'cron' or 'files' in the same rule",
            id="batch-without-cron",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            [[Phase]]
            task = "b"
            dependsOn = "a"
            rule = "cron=0 * * * *"
            """,
            "wf.toml:5:1: phase 'b' has dependsOn and a cron/files rule: "
            "a dependent phase starts when its parent finishes",
            id="depends-on-and-cron",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "cron=0 * * * *&CRON=1 * * * *"
            """,
            "wf.toml:3:24: rule key 'cron' in phase 'a' is repeated (first at column 9)",
            id="repeated-rule-key",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a:x"
            rule = "job=y"
            """,
            "wf.toml:3:13: 'job' in phase 'a:x' is 'y', but the task name gives the job 'x': keep one",
            id="two-jobs",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "cron"
            """,
            "wf.toml:3:9: 'cron' in phase 'a' needs a value: write cron=...",
            id="rule-key-without-value",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "files=*.txt&no_alert=maybe"
            """,
            "wf.toml:3:30: 'no_alert' in phase 'a' must be true or false, or no value, got 'maybe'",
            id="bad-flag",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "files=*.txt&require:{meta:file} x"
            """,
            "wf.toml:3:29: 'require' in task 'a': '{meta:file} x' is not one template key: "
            "write one like 'meta:file' or '{meta:file}'",
            id="bad-require",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            template = "?day={yyy}"
            """,
            "wf.toml:3:12: unknown template key '{yyy}' in template of task 'a' (did you mean '{yyyy}'?)",
            id="bad-template",
        ),
        pytest.param(
            """\
            [[Phase]]
            task = "a"
            rule = "cron=0 * * * *\\u0026ofset=-4h"
            """,
            "wf.toml:3:8: unknown rule key 'ofset' in phase 'a' (did you mean 'offset'?)",
            id="escaped-rule-points-at-its-start",
        ),
        pytest.param(
            'names = "wf"\n[[Phase]]\ntask = "a"\n',
            "wf.toml:1:1: unknown field 'names' (did you mean 'name'?)",
            id="unknown-top-level-key",
        ),
        pytest.param(
            '[cache]\nlocal_path = "./tasks.db"\n[[Phase]]\ntask = "a"\n',
            "wf.toml:1:1: unknown field 'cache'",
            id="unknown-table",
        ),
        pytest.param(
            '[[Phase]]\ntask = "a"\n[Phase.retry]\nmax = 1\n',
            "wf.toml:3:1: 'retry' in phase 'a' must be an integer >= 0, got a mapping",
            id="phase-sub-table",
        ),
        pytest.param(
            'Phase = "a"\n',
            "wf.toml:1:9: 'Phase' must be a list of [[Phase]] tables, got 'a'",
            id="phase-not-tables",
        ),
        pytest.param(
            "# nothing here\n",
            "wf.toml:1:1: no [[Phase]] tables: a flowlord workflow lists its tasks as [[Phase]] entries",
            id="no-phases",
        ),
        pytest.param(
            '[[Phase]]\ntask = "a"\nrule = "cron=0 * * * *\n',
            "wf.toml:3:23: invalid TOML: Illegal character '\\n'",
            id="toml-syntax",
        ),
        pytest.param(
            '[[Phase]]\ntask = "a"\ntask = "b"\n',
            "wf.toml:3:1: invalid TOML: key 'task' is set twice (first at line 2)",
            id="toml-duplicate-key",
        ),
        pytest.param(
            '[[Phase]]\ntask = "a',
            "wf.toml:2:10: invalid TOML: Unterminated string",
            id="toml-at-end",
        ),
    ],
)
def test_each_mistake_gets_its_message_and_place(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_a_byte_order_mark_is_ignored() -> None:
    assert load_toml("wf.toml", '\ufeff[[Phase]]\ntask = "a"\n').tasks[0].name == "a"


def test_a_lower_case_phase_is_no_phase() -> None:
    assert errors_of('[[phase]]\ntask = "a"\n') == [
        "wf.toml:1:1: unknown field 'phase' (did you mean 'Phase'?)",
        "wf.toml:1:1: no [[Phase]] tables: a flowlord workflow lists its tasks as [[Phase]] entries",
    ]


def test_a_key_set_twice_is_named_with_its_first_line() -> None:
    text = '[[Phase]]\ntask = "a"\n[x]\ny = [\n1]\n "y" = 2\n'
    assert errors_of(text) == ["wf.toml:6:2: invalid TOML: key 'y' is set twice (first at line 4)"]
    # A dotted key overwritten by a plain one is left in tomllib's words.
    assert errors_of("a.b = 1\na = 2\n") == ["wf.toml:2:6: invalid TOML: Cannot overwrite a value"]


def test_all_errors_of_a_file_are_reported_in_line_order() -> None:
    text = """\
    descripton = "typo"

    [[Phase]]
    task = "extract"
    rule = "cron=0 0 25 * * *&offest=-4h"
    retry = 1.5

    [[Phase]]
    task = "load"
    dependsOn = "extrat"
    tempalte = "?day={dd}"
    """
    assert errors_of(text) == [
        "wf.toml:1:1: unknown field 'descripton' (did you mean 'description'?)",
        "wf.toml:5:14: 'cron' in phase 'extract': invalid cron expression '0 0 25 * * *': hour field '25' is not valid",
        "wf.toml:5:27: unknown rule key 'offest' in phase 'extract' (did you mean 'offset'?)",
        "wf.toml:6:9: 'retry' in phase 'extract' must be an integer >= 0, got 1.5",
        "wf.toml:10:13: task 'load' depends on unknown task 'extrat' (did you mean 'extract'?)",
        "wf.toml:11:1: unknown field 'tempalte' in phase 'load' (did you mean 'template'?)",
    ]


def test_load_file_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "etl_daily.toml"
    path.write_text((FLOWLORD / "workflow.toml").read_text())
    [spec] = load_file(path)
    assert (spec.name, [t.name for t in spec.tasks]) == ("etl_daily", ["topic_name", "task1"])


def test_validate_files_mixes_toml_with_yaml(tmp_path: Path) -> None:
    (tmp_path / "hourly.toml").write_text('[[Phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    (tmp_path / "other.yaml").write_text("name: other\ntasks:\n  - {name: a, handler: h}\n")
    (tmp_path / "again.toml").write_text('name = "other"\n[[Phase]]\ntask = "a"\n')
    (tmp_path / "broken.toml").write_text('[[Phase]]\ntask = "a"\ndependsOn = "zz"\n')
    paths = [tmp_path / n for n in ("hourly.toml", "other.yaml", "again.toml", "broken.toml")]
    specs, errors, warnings = validate_files(paths)
    assert [s.name for s in specs] == ["hourly", "other"]
    assert warnings == []
    assert [(Path(e.path).name, e.line, e.column, e.message) for e in errors] == [
        (
            "again.toml",
            1,
            8,
            f"workflow 'other' is already defined at {tmp_path / 'other.yaml'}:1: workflow names must be unique",
        ),
        ("broken.toml", 3, 13, "task 'a' depends on unknown task 'zz'"),
    ]


def test_unsupported_files_name_toml(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DefinitionErrors, match=r"unsupported file type '\.txt': use \.yaml, \.yml, \.toml or \.py$"):
        load_file(tmp_path / "notes.txt")
