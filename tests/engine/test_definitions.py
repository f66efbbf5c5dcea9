"""Workflow definitions: YAML and Python builder give one model, and every mistake is pointed at."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetdag.engine.definitions import load_file, load_yaml, validate_files
from jetdag.engine.errors import DefinitionErrors
from jetdag.engine.model import Catchup, RetryPolicy, TaskSpec, Trigger, TriggerRule, WorkflowSpec
from jetdag.engine.workflow import Task, Workflow

DIAMOND = """\
name: diamond
description: fan out and in
config:
  max_concurrency: 2
  timeout: 1h
  retry_policy: {max_attempts: 2, initial_delay: 10s}
tasks:
  - name: a
    handler: command
    payload: {argv: [echo, a]}
  - name: b
    handler: command
    payload: {argv: [echo, b]}
    depends_on: a
  - name: c
    handler: command
    payload: {argv: [echo, c]}
    depends_on: [a]
  - name: d
    handler: command
    payload: {argv: [echo, d]}
    depends_on: [b, c]
"""


def here() -> int:
    """The caller's line number, to check where builder errors point."""
    return sys._getframe(1).f_lineno


def errors_of(text: str) -> list[str]:
    with pytest.raises(DefinitionErrors) as caught:
        load_yaml("wf.yaml", text)
    return [str(e) for e in caught.value.errors]


def workflow_yaml(tasks: str) -> str:
    return "name: wf\ntasks:\n" + textwrap.indent(textwrap.dedent(tasks), "  ")


def command(name: str, *deps: str) -> TaskSpec:
    return TaskSpec(name, "command", payload={"argv": ["echo", name]}, depends_on=deps)


def test_diamond_yaml_loads_to_the_expected_spec() -> None:
    expected = WorkflowSpec(
        name="diamond",
        description="fan out and in",
        tasks=(command("a"), command("b", "a"), command("c", "a"), command("d", "b", "c")),
        retry=RetryPolicy(max_attempts=2, initial_delay=10.0),
        timeout=3600.0,
        max_concurrency=2,
    )
    assert load_yaml("diamond.yaml", DIAMOND) == expected


def test_python_builder_gives_the_same_spec_as_yaml() -> None:
    wf = Workflow(
        name="diamond",
        description="fan out and in",
        retry=RetryPolicy(max_attempts=2, initial_delay=10.0),
        timeout="1h",
        max_concurrency=2,
    )
    a, b, c, d = (wf.add(Task(n, handler="command", payload={"argv": ["echo", n]})) for n in "abcd")
    a >> [b, c]
    [b, c] >> d
    assert wf.spec().to_dict() == load_yaml("diamond.yaml", DIAMOND).to_dict()


def test_spec_survives_a_dict_round_trip() -> None:
    spec = load_yaml("diamond.yaml", DIAMOND)
    assert WorkflowSpec.from_dict(spec.to_dict()) == spec


def test_every_field_is_read_into_the_model() -> None:
    spec = load_yaml(
        "full.yaml",
        textwrap.dedent("""\
        name: full
        schedule: "*/5 * * * *"
        timezone: Europe/Paris
        catchup: true
        files: "in/*.csv"
        on_message: orders.created
        offset: -4h
        params: {day: 2024-01-31, n: 3}
        tasks:
          - {name: a, type: etl, handler: noop, max_retries: 4, timeout: 90s, require: "meta:ready", no_alert: true}
          - name: b
            handler: sleep
            payload: {seconds: 1.5, when: 2024-01-01}
            depends_on: a
            retry_policy: {jitter: 0.5}
            trigger_rule: all_done
            priority: 9
            template: "{yyyy}-{mm}"
        """),
    )
    assert spec.triggers == (
        Trigger(cron="*/5 * * * *", timezone="Europe/Paris", catchup=Catchup.ALL, offset=-14400.0),
        Trigger(files=("in/*.csv",), offset=-14400.0),
        Trigger(subject="orders.created", offset=-14400.0),
    )
    assert spec.params == {"day": "2024-01-31", "n": 3}
    assert spec.tasks == (
        TaskSpec(
            "a",
            "noop",
            queue="etl",
            retry=RetryPolicy(max_attempts=5),
            timeout=90.0,
            require=("meta:ready",),
            no_alert=True,
        ),
        TaskSpec(
            "b",
            "sleep",
            payload={"seconds": 1.5, "when": "2024-01-01"},
            depends_on=("a",),
            trigger_rule=TriggerRule.ALL_DONE,
            priority=9,
            retry=RetryPolicy(jitter=0.5),
            template="{yyyy}-{mm}",
        ),
    )
    assert type(spec.tasks[1].payload["seconds"]) is float  # ruamel's ScalarFloat is turned plain


def test_tasks_are_put_in_dependency_order() -> None:
    spec = load_yaml(
        "wf.yaml",
        workflow_yaml("""\
            - {name: d, handler: h, depends_on: [b, c]}
            - {name: c, handler: h, depends_on: a}
            - {name: b, handler: h, depends_on: a}
            - {name: a, handler: h}
        """),
    )
    assert [t.name for t in spec.tasks] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            workflow_yaml("- {name: a, handler: h}\n- name: b\n  handler: h\n  depend_on: [a]\n"),
            "wf.yaml:6:5: unknown field 'depend_on' in task 'b' (did you mean 'depends_on'?)",
            id="unknown-field",
        ),
        pytest.param(
            "name: wf\nname: again\ntasks: []\n",
            "wf.yaml:2:1: duplicate key 'name' (first at line 1)",
            id="duplicate-key",
        ),
        pytest.param(
            workflow_yaml("- {name: a, handler: h, timeout: 10x}"),
            "wf.yaml:3:36: 'timeout' in task 'a': invalid duration '10x': "
            "use a number with ms, s, m, h or d, like '90s' or '1h30m'",
            id="bad-duration",
        ),
        pytest.param(
            workflow_yaml("""\
                - {name: x, handler: h}
                - {name: b, handler: h, depends_on: c}
                - {name: a, handler: h, depends_on: b}
                - {name: c, handler: h, depends_on: [a, x]}
            """),
            "wf.yaml:4:5: cycle: b -> a -> c -> b",
            id="cycle",
        ),
        pytest.param(
            workflow_yaml("- {name: load, handler: h}\n- {name: d, handler: h, depends_on: [lod]}"),
            "wf.yaml:4:40: task 'd' depends on unknown task 'lod' (did you mean 'load'?)",
            id="unknown-dependency",
        ),
        pytest.param(
            workflow_yaml("- {name: a, handler: h, depends_on: a}"),
            "wf.yaml:3:39: task 'a' depends on itself",
            id="self-dependency",
        ),
        pytest.param(
            workflow_yaml("- {name: a, handler: h}\n- {name: a, handler: h}"),
            "wf.yaml:4:12: duplicate task name 'a' (first defined at line 3)",
            id="duplicate-task",
        ),
        pytest.param(
            workflow_yaml("- {name: a, handler: h, priority: 12}"),
            "wf.yaml:3:37: 'priority' in task 'a' must be an integer from 0 to 9, got 12",
            id="bad-priority",
        ),
        pytest.param(
            workflow_yaml("- {name: a, handler: h, trigger_rule: any}"),
            "wf.yaml:3:41: 'trigger_rule' in task 'a' must be one of all_success, all_done, "
            "all_failed, one_success, one_failed, none_failed, got 'any'",
            id="bad-trigger-rule",
        ),
        pytest.param(
            workflow_yaml("- {name: a, handler: h, queue: q, type: q}"),
            "wf.yaml:3:37: 'type' and 'queue' in task 'a' name the same thing: keep one",
            id="type-and-queue",
        ),
        pytest.param(
            "schedule: '0 25 * * *'\n" + workflow_yaml("- {name: a, handler: h}"),
            "wf.yaml:1:11: 'schedule': invalid cron expression '0 25 * * *': hour field '25' is not valid",
            id="bad-cron",
        ),
        pytest.param(
            "schedule: '* * * *'\n" + workflow_yaml("- {name: a, handler: h}"),
            "wf.yaml:1:11: 'schedule': invalid cron expression '* * * *': use 5 fields "
            "(minute hour day-of-month month day-of-week), 6 with the seconds first, or @daily",
            id="cron-field-count",
        ),
        pytest.param(
            workflow_yaml("- {name: load data, handler: h}"),
            "wf.yaml:3:12: invalid task name 'load data': use only letters, digits, '_', '-' and ':'",
            id="bad-name-token",
        ),
        pytest.param(
            workflow_yaml("- {name: a, handler: h, queue: gpu.big}"),
            "wf.yaml:3:34: invalid queue name 'gpu.big' in task 'a': use only letters, digits, '_' and '-'",
            id="bad-queue-token",
        ),
        pytest.param(
            workflow_yaml("- {name: a}"),
            "wf.yaml:3:5: missing 'handler' in task 'a': name the handler that runs it, or a 'type'",
            id="missing-handler",
        ),
        pytest.param(
            workflow_yaml("- {handler: h}"),
            "wf.yaml:3:5: missing required field 'name' in task #1",
            id="missing-task-name",
        ),
        pytest.param("tasks: [{name: a, handler: h}]\n", "wf.yaml:1:1: missing required field 'name'", id="no-name"),
        pytest.param("name: wf\n", "wf.yaml:1:1: missing required field 'tasks'", id="no-tasks"),
        pytest.param(
            "name: wf\ntasks: []\n",
            "wf.yaml:2:8: 'tasks' must be a non-empty list of tasks, got an empty list",
            id="empty-tasks",
        ),
        pytest.param(
            workflow_yaml("- {name: a, handler: h, max_retries: 1, retry_policy: {max_attempts: 2}}"),
            "wf.yaml:3:43: 'max_retries' and 'retry_policy' in task 'a' both set retries: keep one",
            id="max-retries-and-policy",
        ),
        pytest.param(
            "config: {retry_policy: {jitter: 2}}\n" + workflow_yaml("- {name: a, handler: h}"),
            "wf.yaml:1:33: 'jitter' in config.retry_policy must be a number from 0 to 1, got 2",
            id="bad-jitter",
        ),
        pytest.param(
            "catchup: yes\nschedule: '@daily'\n" + workflow_yaml("- {name: a, handler: h}"),
            "wf.yaml:1:10: 'catchup' must be none, latest or all (or true for all, false for none), got 'yes'",
            id="bad-catchup",
        ),
        pytest.param(
            "timezone: Mars/Base\nschedule: '@daily'\n" + workflow_yaml("- {name: a, handler: h}"),
            "wf.yaml:1:11: 'timezone': unknown time zone 'Mars/Base': use an IANA name like 'UTC' or 'Europe/Paris'",
            id="bad-timezone",
        ),
        pytest.param(
            "name: wf\ntasks: [{name: a, handler: h}\n",
            "wf.yaml:3:1: invalid YAML: expected ',' or ']', but got '<stream end>' while parsing a flow sequence",
            id="yaml-syntax",
        ),
        pytest.param(
            "",
            "wf.yaml:1:1: a workflow file must be a YAML mapping with 'name' and 'tasks', got an empty file",
            id="empty-file",
        ),
    ],
)
def test_each_mistake_gets_its_message_and_place(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_all_errors_of_a_file_are_reported_in_line_order() -> None:
    text = """\
name: '...'
schedul: "* * * * *"
tasks:
  - {name: a, handler: h, priority: -1}
  - {name: b, handler: h, depends_on: [zz]}
"""
    assert errors_of(text) == [
        "wf.yaml:1:7: 'name': workflow name '...' needs at least one letter or digit",
        "wf.yaml:2:1: unknown field 'schedul' (did you mean 'schedule'?)",
        "wf.yaml:4:37: 'priority' in task 'a' must be an integer from 0 to 9, got -1",
        "wf.yaml:5:40: task 'b' depends on unknown task 'zz'",
    ]


def test_every_duplicate_key_is_reported() -> None:
    text = "name: a\nname: b\ntasks:\n  - {name: x, handler: h, handler: g}\n"
    assert errors_of(text) == [
        "wf.yaml:2:1: duplicate key 'name' (first at line 1)",
        "wf.yaml:4:27: duplicate key 'handler' (first at line 4)",
    ]


def test_builder_errors_point_at_the_source_lines() -> None:
    wf, wf_line = Workflow(name="..."), here()
    _, a_line = wf.add(Task("a", handler="h", priority=11)), here()
    _, b_line = wf.add(Task("b", handler=print)), here()
    edge_line = here() + 1
    wf.set_downstream("a", "nope")
    with pytest.raises(DefinitionErrors) as caught:
        wf.spec()
    path = __file__
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:{wf_line}:1: 'name': workflow name '...' needs at least one letter or digit",
        f"{path}:{a_line}:1: 'priority' in task 'a' must be an integer from 0 to 9, got 11",
        f"{path}:{b_line}:1: 'handler' in task 'b' must be a handler name or a function registered "
        "with @handler, got the function print",
        f"{path}:{edge_line}:1: set_downstream: workflow '...' has no task 'nope'",
    ]


def test_builder_reports_cycles_at_the_first_task_of_the_cycle() -> None:
    wf = Workflow(name="loop")
    a, a_line = wf.add(Task("a", handler="h")), here()
    b = wf.add(Task("b", handler="h"))
    a >> b >> a
    with pytest.raises(DefinitionErrors, match=rf":{a_line}:1: cycle: a -> b -> a$"):
        wf.spec()


def test_builder_takes_handler_names_from_registered_functions() -> None:
    def extract() -> None: ...

    extract.__jetdag_handler__ = "extract"  # type: ignore[attr-defined]
    wf = Workflow(name="etl")
    wf.add(Task("a", handler=extract, max_retries=0))
    task = wf.spec().tasks[0]
    assert (task.handler, task.retry) == ("extract", RetryPolicy(max_attempts=1))


def test_load_file_collects_the_workflows_of_a_python_file(tmp_path: Path) -> None:
    source = tmp_path / "flows.py"
    source.write_text(
        "from jetdag.engine.workflow import Task, Workflow\n"
        "wf = Workflow(name='py_flow')\n"
        "a = wf.add(Task('a', handler='noop'))\n"
        "same = wf\n"
    )
    [spec] = load_file(source)
    assert (spec.name, [t.name for t in spec.tasks]) == ("py_flow", ["a"])


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        ("notes.txt", "", "1:1: unsupported file type '.txt': use .yaml, .yml, .toml or .py"),
        ("empty.py", "x = 1\n", '1:1: no Workflow defined: assign one at module level, like wf = Workflow(name="etl")'),
        (
            "boom.py",
            "x = 1\ndef f():\n    return 1 / 0\nf()\n",
            "3:1: cannot import: ZeroDivisionError: division by zero",
        ),
        ("syntax.py", "x = (\n", "1:5: cannot import: SyntaxError: '(' was never closed"),
    ],
)
def test_load_file_explains_files_it_cannot_use(tmp_path: Path, name: str, source: str, expected: str) -> None:
    (tmp_path / name).write_text(source)
    with pytest.raises(DefinitionErrors) as caught:
        load_file(tmp_path / name)
    assert str(caught.value) == f"{tmp_path / name}:{expected}"


def test_load_file_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionErrors, match=r"missing\.yaml:1:1: cannot read: No such file or directory$"):
        load_file(tmp_path / "missing.yaml")


def test_validate_files_reports_every_problem_and_a_name_defined_twice(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(DIAMOND)
    (tmp_path / "two.yml").write_text(DIAMOND)
    (tmp_path / "bad.yaml").write_text("name: [\n")
    specs, errors, warnings = validate_files([tmp_path / "one.yaml", tmp_path / "two.yml", tmp_path / "bad.yaml"])
    assert warnings == []
    assert [s.name for s in specs] == ["diamond"]
    assert [(Path(e.path).name, e.line, e.message) for e in errors] == [
        (
            "two.yml",
            1,
            f"workflow 'diamond' is already defined at {tmp_path / 'one.yaml'}:1: workflow names must be unique",
        ),
        ("bad.yaml", 2, "invalid YAML: expected the node content, but found '<stream end>' while parsing a flow node"),
    ]


@st.composite
def dags(draw: st.DrawFn) -> list[tuple[str, list[str], int]]:
    """Tasks t0..tn, each depending on a random subset of the earlier ones, written in any order."""
    size = draw(st.integers(1, 12))
    earlier = [
        draw(st.lists(st.sampled_from([f"t{j}" for j in range(i)]), unique=True)) if i else [] for i in range(size)
    ]
    order = draw(st.permutations(range(size)))
    return [(f"t{i}", earlier[i], draw(st.integers(0, 9))) for i in order]


@given(dags())
def test_any_dag_gives_the_same_spec_from_yaml_and_from_python(dag: list[tuple[str, list[str], int]]) -> None:
    lines = ["name: random", "tasks:"]
    for name, deps, priority in dag:
        lines += [f"  - {{name: {name}, handler: noop, priority: {priority}, depends_on: [{', '.join(deps)}]}}"]
    wf = Workflow(name="random")
    tasks = {name: wf.add(Task(name, handler="noop", priority=priority)) for name, _, priority in dag}
    for name, deps, _ in dag:
        for dep in deps:
            tasks[dep] >> tasks[name]
    from_python = wf.spec()
    assert from_python.to_dict() == load_yaml("random.yaml", "\n".join(lines)).to_dict()
    position = {t.name: i for i, t in enumerate(from_python.tasks)}
    assert all(position[d] < position[t.name] for t in from_python.tasks for d in t.depends_on)


# --- FlowCtl's example, names as written, and the checks added with templates -------------------

FLOWCTL = Path(__file__).parent / "flowctl" / "my_workflow.yaml"


def test_the_flowctl_example_loads_unchanged() -> None:
    """The YAML from FlowCtl's README, byte for byte: a name with a space and tasks given only a type."""
    [spec] = load_file(FLOWCTL)
    assert (spec.name, spec.title) == ("My-Workflow", "My Workflow")
    assert (spec.max_concurrency, spec.timeout) == (10, 3600.0)
    assert spec.retry == RetryPolicy(max_attempts=3, initial_delay=10.0, max_delay=300.0, backoff_factor=2.0)
    task1, task2 = spec.tasks
    assert (task1.queue, task1.handler, task1.priority) == ("etl", "etl", 1)
    assert task1.payload == {"source_url": "s3://bucket/data", "target_url": "postgres://db/table"}
    assert (task2.queue, task2.handler, task2.depends_on) == ("generic", "generic", ("task1",))
    assert task2.retry == RetryPolicy(max_attempts=6, initial_delay=10.0, max_delay=300.0, backoff_factor=2.0)


def test_schedule_options_without_a_schedule_are_errors() -> None:
    options = "timezone: UTC\ncatchup: true\ncatchup_window: 2h\noverlap: skip\noffset: -1h\n"
    text = "name: wf\n" + options + workflow_yaml("- {name: a, handler: h}")[9:]
    assert errors_of(text) == [
        "wf.yaml:2:1: 'timezone' applies to 'schedule', which is not set",
        "wf.yaml:3:1: 'catchup' applies to 'schedule', which is not set",
        "wf.yaml:4:1: 'catchup_window' applies to 'schedule', which is not set",
        "wf.yaml:5:1: 'overlap' applies to 'schedule', which is not set",
        "wf.yaml:6:1: 'offset' applies to 'schedule' or 'files', and neither is set",
    ]


def test_template_keys_are_checked_where_they_are_written() -> None:
    text = """\
name: wf
params: {day: today}
tasks:
  - {name: a, handler: h, payload: {argv: [x, "{param:dya}"]}}
  - {name: b, handler: h, depends_on: a, template: "{yyy}/{result:c.rows}"}
  - {name: c, handler: h, require: "{nope:x}"}
"""
    assert errors_of(text) == [
        "wf.yaml:4:36: template key '{param:dya}' in payload.argv[1] of task 'a': the workflow declares no param "
        "'dya' (did you mean '{param:day}'?)",
        "wf.yaml:5:52: unknown template key '{yyy}' in template of task 'b' (did you mean '{yyyy}'?)",
        "wf.yaml:5:52: template key '{result:c.rows}' in template of task 'b': 'c' is not upstream of this task",
        "wf.yaml:6:36: 'require' in task 'c': unknown template key '{nope:x}' (known keys: {yyyy} {mm} {dd} {hh} "
        "{ts} {meta:...} {param:...} {result:...}; write '{{' and '}}' for literal braces)",
    ]


def test_a_task_name_may_carry_a_flowlord_job() -> None:
    spec = load_yaml("wf.yaml", workflow_yaml("- {name: 'topic:job', handler: topic, job: job}"))
    assert (spec.tasks[0].name, spec.tasks[0].job) == ("topic:job", "job")


def test_requires_names_the_labels_a_worker_must_have() -> None:
    text = "name: w\ntasks:\n  - {name: a, handler: h, requires: {gpu: true, zone: eu-1, cores: 8}}\n"
    spec = load_yaml("wf.yaml", text)
    assert spec.tasks[0].requires == {"gpu": "true", "zone": "eu-1", "cores": "8"}
    bad = (
        "name: w\ntasks:\n  - {name: a, handler: h, requires: gpu}\n"
        "  - {name: b, handler: h, requires: {zone: eu west}}\n"
    )
    assert errors_of(bad) == [
        "wf.yaml:3:37: 'requires' in task 'a' must be a map of labels, like {gpu: true}, got 'gpu'",
        "wf.yaml:4:37: 'requires' in task 'b' must be a map of labels whose names and values are letters, digits, '_' "
        "and '-' (not zone: 'eu west'), got a mapping",
    ]
    built = Workflow(name="w")
    built.add(Task("a", handler="h", requires={"gpu": True}))
    assert built.check()[0].tasks[0].requires == {"gpu": "true"}
