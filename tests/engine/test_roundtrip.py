"""Exported definitions read back into the spec they came from: YAML, Python and the model agree.

The strategy draws tasks already in a dependency order (each task depends only on earlier ones), so
the loaders, which keep the written order wherever it fits, give the tasks back in the same order
and specs compare equal without normalising.
"""

from __future__ import annotations

import itertools
import re
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetdag.engine.definitions import load_file, load_yaml
from jetdag.engine.definitions.export import to_python, to_yaml
from jetdag.engine.model import Batch, Catchup, Overlap, RetryPolicy, TaskSpec, Trigger, TriggerRule, WorkflowSpec
from jetdag.engine.subjects import workflow_key

# Strategies

NO_BRACES = st.characters(exclude_characters="{}", exclude_categories=["Cs"])
"""Payload strings and templates are checked as templates: stray braces would be (unknown) keys."""

durations = st.one_of(
    st.sampled_from([0.0, 0.001, 0.25, 1.0, 1.5, 10.0, 90.0, 3600.0, 5400.0, 86400.0, 90061.0]),
    st.floats(0, 1e7, allow_nan=False, allow_infinity=False),
    st.integers(0, 10**6).map(float),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "yes", "no", "null", "~", "true", "1", "1.5", "2024-01-31", "0x1f", "- a", "a: b", "#x"]),
)


def json_like(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Plain values; dict keys may hold any text (templates render values only)."""
    leaves = st.one_of(scalars, text)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


payloads = json_like(st.text(NO_BRACES, max_size=12) | st.sampled_from(["{yyyy}-{mm}-{dd}", "{ts}", "${HOME}"]))
param_values = json_like(st.text(max_size=12))

retry_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 10),
    initial_delay=durations,
    max_delay=durations,
    backoff_factor=st.one_of(st.sampled_from([1.0, 2.0, 3.0]), st.floats(1, 10)),
    jitter=st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.floats(0, 1)),
)

token_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,12}", fullmatch=True)
spaced_names = st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.']{0,6}", fullmatch=True), min_size=2, max_size=3).map(
    " ".join
)
task_names = st.from_regex(r"[a-z][a-z0-9_:-]{0,8}", fullmatch=True)
handlers = st.one_of(
    st.sampled_from(["command", "noop", "sleep", "http", "etl.load"]),
    st.from_regex(r"[A-Za-z0-9_-]{1,6}(\.[A-Za-z0-9_-]{1,4}){0,2}", fullmatch=True),
)
queues = st.one_of(st.sampled_from(["default", "etl", "gpu"]), st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True))
template_texts = st.one_of(
    st.none(),
    st.text(NO_BRACES, max_size=20),
    st.sampled_from(["{yyyy}-{mm}-{dd}", "s3://bucket/{yyyy}/{mm}/{dd}/data.csv", "day={yyyy}-{mm}-{dd}"]),
)

CRONS = ["*/5 * * * *", "0 1 * * *", "30 2 * * 1-5", "0 0 1 * *", "@daily", "@hourly", "30 0 */2 * * *"]
"""The last has 6 fields, seconds first, as every format reads them."""
GLOBS = ["in/*.csv", "/data/*/*/*.json", "drop/report.txt", "s3://bucket/in/*", "/in/[a-c]?.csv"]
SUBJECTS = ["orders.created", "files.*", "events.>", "jd-ext.ready"]


@st.composite
def triggers(draw: st.DrawFn) -> tuple[Trigger, ...]:
    """What YAML and the builder can say: a schedule, files, a subject, sharing one offset."""
    cron = draw(st.none() | st.sampled_from(CRONS))
    files = tuple(draw(st.lists(st.sampled_from(GLOBS), max_size=2, unique=True)))
    subject = draw(st.none() | st.sampled_from(SUBJECTS))
    offset = 0.0
    if cron or files:
        offset = draw(st.sampled_from([0.0, -14400.0, 3600.0, -86400.0, -90.5]) | st.floats(-1e6, 1e6))
    out: list[Trigger] = []
    if cron:
        clock = Trigger(
            cron=cron,
            timezone=draw(st.sampled_from([None, "UTC", "Europe/Paris"])),
            catchup=draw(st.sampled_from(Catchup)),
            overlap=draw(st.sampled_from(Overlap)),
            offset=offset,
        )
        window = draw(st.none() | durations.filter(lambda seconds: seconds > 0))
        out.append(clock if window is None else replace(clock, catchup_window=window))
    if files:
        out.append(Trigger(files=files, offset=offset))
    if subject:
        out.append(Trigger(subject=subject, offset=offset))
    return tuple(out)


@st.composite
def workflows(draw: st.DrawFn) -> WorkflowSpec:
    written = draw(token_names | spaced_names)
    retry = draw(st.just(RetryPolicy()) | retry_policies)
    names = draw(st.lists(task_names, min_size=1, max_size=12, unique=True))
    tasks: list[TaskSpec] = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), max_size=3, unique=True)) if i else []
        kind = draw(st.sampled_from(["none", "max_retries", "policy"]))
        task_retry = {
            "none": None,
            "max_retries": replace(retry, max_attempts=draw(st.integers(1, 10))),
            "policy": draw(retry_policies),
        }[kind]
        tasks.append(
            TaskSpec(
                name=name,
                handler=draw(handlers),
                queue=draw(queues),
                payload=draw(st.none() | payloads),
                depends_on=tuple(deps),
                trigger_rule=draw(st.sampled_from(TriggerRule)),
                priority=draw(st.integers(0, 9)),
                retry=task_retry,
                timeout=draw(st.none() | durations),
                no_alert=draw(st.booleans()),
                template=draw(template_texts),
                require=tuple(draw(st.lists(st.sampled_from(["{meta:file}", "meta:rows", "{yyyy}"]), unique=True))),
                job=draw(st.none() | st.text(max_size=10)),
                requires=draw(
                    st.dictionaries(st.sampled_from(["gpu", "zone", "os"]), st.sampled_from(["true", "eu", "a-1"]))
                ),
            )
        )
    name = workflow_key(written)
    return WorkflowSpec(
        name=name,
        title=written if written != name else "",
        tasks=tuple(tasks),
        description=draw(st.text(max_size=40)),
        params=draw(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True), param_values, max_size=3)),
        retry=retry,
        timeout=draw(st.none() | durations),
        max_concurrency=draw(st.none() | st.integers(1, 50)),
        max_active_runs=draw(st.none() | st.integers(1, 50)),
        triggers=draw(triggers()),
    )


# Properties

_files = itertools.count()


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@settings(max_examples=100, deadline=None)
@given(workflows())
def test_yaml_reads_back_the_spec_it_was_written_from(spec: WorkflowSpec) -> None:
    assert load_yaml("x.yaml", to_yaml(spec)) == spec


@settings(max_examples=100, deadline=None)
@given(spec=workflows())
def test_python_reads_back_the_spec_it_was_written_from(scratch: Path, spec: WorkflowSpec) -> None:
    # A fresh file each time: a rewritten one of the same size within a second could reuse stale bytecode.
    path = scratch / f"wf_{next(_files)}.py"
    path.write_text(to_python(spec), encoding="utf-8")
    assert load_file(path) == [spec]


# Examples

SMALL = WorkflowSpec(
    name="Nightly-Report",
    title="Nightly Report",
    description="Fetch, build, mail.",
    params={"day": "2024-01-31", "limit": 10},
    retry=RetryPolicy(max_attempts=2, initial_delay=10.0),
    timeout=3600.0,
    max_concurrency=2,
    triggers=(
        Trigger(cron="0 1 * * *", timezone="Europe/Paris", offset=-86400.0),
        Trigger(subject="reports.requested", offset=-86400.0),
    ),
    tasks=(
        TaskSpec("fetch", "http", payload={"url": "https://example.com/x", "method": "GET"}, timeout=90.0),
        TaskSpec(
            "build",
            "command",
            queue="etl",
            payload={"argv": ["make", "report"]},
            depends_on=("fetch",),
            retry=RetryPolicy(max_attempts=5, initial_delay=10.0),
            template="{yyyy}-{mm}-{dd}",
        ),
        TaskSpec(
            "mail",
            "command",
            depends_on=("build", "fetch"),
            trigger_rule=TriggerRule.ALL_DONE,
            priority=9,
            retry=RetryPolicy(jitter=0.5),
            no_alert=True,
        ),
    ),
)

SMALL_YAML = """\
name: Nightly Report
description: Fetch, build, mail.
schedule: 0 1 * * *
timezone: Europe/Paris
on_message: reports.requested
offset: -24h
params:
  day: '2024-01-31'
  limit: 10
config:
  max_concurrency: 2
  timeout: 1h
  retry_policy:
    max_attempts: 2
    initial_delay: 10s
tasks:
  - name: fetch
    handler: http
    timeout: 1m30s
    payload: {url: https://example.com/x, method: GET}
  - name: build
    handler: command
    queue: etl
    depends_on: fetch
    max_retries: 4
    template: '{yyyy}-{mm}-{dd}'
    payload: {argv: [make, report]}
  - name: mail
    handler: command
    depends_on: [build, fetch]
    trigger_rule: all_done
    priority: 9
    retry_policy:
      max_attempts: 3
      initial_delay: 1s
      jitter: 0.5
    no_alert: true
"""

SMALL_PYTHON = """\
\"\"\"Workflow 'Nightly-Report', as the jetdag Python builder writes it.\"\"\"

from jetdag.engine.model import RetryPolicy
from jetdag.engine.workflow import Task, Workflow

wf = Workflow(
    name='Nightly Report',
    description='Fetch, build, mail.',
    schedule='0 1 * * *',
    timezone='Europe/Paris',
    on_message='reports.requested',
    offset='-24h',
    params={'day': '2024-01-31', 'limit': 10},
    retry=RetryPolicy(max_attempts=2, initial_delay=10.0),
    timeout='1h',
    max_concurrency=2,
)

t0 = wf.add(Task('fetch', handler='http', payload={'url': 'https://example.com/x', 'method': 'GET'}, timeout='1m30s'))
t1 = wf.add(
    Task(
        'build',
        handler='command',
        payload={'argv': ['make', 'report']},
        queue='etl',
        max_retries=4,
        template='{yyyy}-{mm}-{dd}',
    )
)
t2 = wf.add(
    Task('mail', handler='command', trigger_rule='all_done', priority=9, retry=RetryPolicy(jitter=0.5), no_alert=True)
)

t0 >> t1
[t1, t0] >> t2
"""


def test_yaml_reads_like_a_person_wrote_it() -> None:
    assert to_yaml(SMALL) == SMALL_YAML
    assert load_yaml("small.yaml", SMALL_YAML) == SMALL


def test_python_reads_like_a_person_wrote_it(tmp_path: Path) -> None:
    assert to_python(SMALL) == SMALL_PYTHON
    (tmp_path / "small.py").write_text(SMALL_PYTHON)
    assert load_file(tmp_path / "small.py") == [SMALL]


def test_durations_that_no_unit_says_exactly_are_written_in_seconds() -> None:
    spec = replace(SMALL, timeout=0.0001, triggers=(Trigger(files=("in/*",), offset=-1e-05),))
    text = to_yaml(spec)
    assert "timeout: 0.0001\n" in text
    assert "offset: -0.00001s\n" in text
    assert load_yaml("x.yaml", text) == spec


@pytest.mark.parametrize(
    ("triggers", "expected"),
    [
        pytest.param(
            (Trigger(cron="@daily", batch=Batch(span=-86400.0)),),
            "workflow 'Nightly-Report': {fmt} cannot express batching; keep it in TOML",
            id="batch",
        ),
        pytest.param(
            (Trigger(cron="@daily"), Trigger(cron="@hourly")),
            "workflow 'Nightly-Report': {fmt} cannot express more than one schedule trigger; keep it in TOML",
            id="two-crons",
        ),
        pytest.param(
            (Trigger(files=("in/*",), start=("build",)),),
            "workflow 'Nightly-Report': {fmt} cannot express a trigger that starts at given tasks (start=...); "
            "keep it in TOML",
            id="start",
        ),
        pytest.param(
            (Trigger(cron="@daily", offset=-3600.0), Trigger(files=("in/*",))),
            "workflow 'Nightly-Report': {fmt} cannot express triggers with different offsets; keep it in TOML",
            id="two-offsets",
        ),
        pytest.param(
            (Trigger(subject="a.b", offset=60.0),),
            "workflow 'Nightly-Report': {fmt} cannot express an offset on an on_message trigger alone; keep it in TOML",
            id="offset-on-message",
        ),
        pytest.param(
            (Trigger(cron="@daily", files=("in/*",)),),
            "workflow 'Nightly-Report': {fmt} cannot express a trigger with schedule and files; keep it in TOML",
            id="cron-and-files",
        ),
        pytest.param(
            (Trigger(files=("in/*",), overlap=Overlap.SKIP),),
            "workflow 'Nightly-Report': {fmt} cannot express a timezone, catchup, catchup_window or overlap on a "
            "files trigger; keep it in TOML",
            id="overlap-on-files",
        ),
        pytest.param(
            (Trigger(files=("in/*",)), Trigger(cron="@daily")),
            "workflow 'Nightly-Report': {fmt} cannot express triggers in another order than schedule, files, "
            "on_message; keep it in TOML",
            id="order",
        ),
    ],
)
def test_what_the_formats_cannot_express_is_refused(triggers: tuple[Trigger, ...], expected: str) -> None:
    spec = replace(SMALL, triggers=triggers)
    with pytest.raises(ValueError) as yaml_error:
        to_yaml(spec)
    assert str(yaml_error.value) == expected.format(fmt="YAML")
    with pytest.raises(ValueError) as python_error:
        to_python(spec)
    assert str(python_error.value) == expected.format(fmt="the Python builder")


def test_schedule_policies_are_written_by_name_and_duration(tmp_path: Path) -> None:
    clock = Trigger(cron="0 0 2 * * *", catchup=Catchup.LATEST, catchup_window=43200.0, overlap=Overlap.BUFFER_ONE)
    spec = replace(SMALL, triggers=(clock,), max_active_runs=1)
    text = to_yaml(spec)
    assert "schedule: 0 0 2 * * *\ncatchup: latest\ncatchup_window: 12h\noverlap: buffer_one\n" in text
    assert "config:\n  max_concurrency: 2\n  max_active_runs: 1\n" in text
    assert load_yaml("x.yaml", text) == spec
    source = to_python(spec)
    assert "    catchup='latest',\n    catchup_window='12h',\n    overlap='buffer_one',\n" in source
    assert "    max_active_runs=1,\n" in source
    (tmp_path / "policies.py").write_text(source)
    assert load_file(tmp_path / "policies.py") == [spec]


def test_a_title_that_names_another_workflow_is_refused() -> None:
    spec = replace(SMALL, title="Weekly Report")
    expected = "workflow 'Nightly-Report': its title 'Weekly Report' would give it the id 'Weekly-Report' instead"
    with pytest.raises(ValueError, match="^" + re.escape(expected) + "$"):
        to_yaml(spec)
    with pytest.raises(ValueError, match="^" + re.escape(expected) + "$"):
        to_python(spec)


def test_the_diamond_example_survives_both_formats(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "engine" / "examples" / "diamond.yaml"
    spec = load_yaml(example)
    assert load_yaml("again.yaml", to_yaml(spec)) == spec
    (tmp_path / "diamond.py").write_text(to_python(spec))
    assert load_file(tmp_path / "diamond.py") == [spec]
    assert to_yaml(spec).startswith(
        textwrap.dedent("""\
        name: diamond
        description: Fan out, fan in — the smallest DAG that shows both.
        tasks:
          - name: a
            handler: command
            payload: {argv: [echo, extract]}
        """)
    )
