"""GET /metrics: the renderer alone (exact text), then the endpoint over a real system, with and without an auditor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.web.api.metrics import Family, histogram, render
from jetdag.web.app import create_app
from tests.helpers import eventually

Http = AsyncTestClient[Any]
ONE = WorkflowSpec("t_metrics_one", (TaskSpec("only", "noop"),))


def test_render_writes_the_text_exposition_format() -> None:
    runs = Family("jetdag_runs", "gauge", "Runs by state.").add(3, state="succeeded").add(1, state='we"ird\n')
    hist = histogram("jetdag_task_duration_seconds", "Run time.", (0.005, 1), [2, 0, 1], 7.25)
    text = render([runs, hist, Family("jetdag_sse_clients", "gauge", "a\\b").add(0)], ["note: from kv"])
    assert text == (
        "# note: from kv\n"
        "# HELP jetdag_runs Runs by state.\n"
        "# TYPE jetdag_runs gauge\n"
        'jetdag_runs{state="succeeded"} 3\n'
        'jetdag_runs{state="we\\"ird\\n"} 1\n'
        "# HELP jetdag_task_duration_seconds Run time.\n"
        "# TYPE jetdag_task_duration_seconds histogram\n"
        'jetdag_task_duration_seconds_bucket{le="0.005"} 2\n'
        'jetdag_task_duration_seconds_bucket{le="1"} 2\n'
        'jetdag_task_duration_seconds_bucket{le="+Inf"} 3\n'
        "jetdag_task_duration_seconds_sum 7.25\n"
        "jetdag_task_duration_seconds_count 3\n"
        "# HELP jetdag_sse_clients a\\\\b\n"
        "# TYPE jetdag_sse_clients gauge\n"
        "jetdag_sse_clients 0\n"
    )
    with pytest.raises(ValueError):
        histogram("h", "h", (1,), [1], 0)


@pytest.fixture
async def http(nats_url: str, audited_system: None) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def test_metrics_from_the_audit_log(nats_url: str, http: Http) -> None:
    async with await Client.connect(nats_url) as client:
        await client.apply(ONE)
        await client.wait(await client.submit(ONE.name), timeout=20)

    async def scraped() -> str:
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'jetdag_runs{state="succeeded"} 1' in response.text, response.text
        assert 'jetdag_workers{state="alive"} 1' in response.text
        return response.text

    text = await eventually(scraped)
    assert 'jetdag_metrics_source{source="audit"} 1' in text
    assert 'jetdag_tasks{state="succeeded"} 1' in text
    assert 'jetdag_task_duration_seconds_bucket{le="+Inf"} 1' in text and "jetdag_task_duration_seconds_count 1" in text
    assert 'jetdag_queue_depth{queue="default"} 0' in text
    assert 'jetdag_consumer_lag{consumer="jd_auditor"}' in text and 'jetdag_consumer_lag{consumer="jd_part_0"}' in text
    assert "jetdag_sse_clients " in text


async def test_without_an_auditor_runs_come_from_kv(nats_url: str, system: System, client: Client) -> None:
    await client.apply(ONE)
    await client.wait(await client.submit(ONE.name), timeout=20)
    async with AsyncTestClient(app=create_app(nats_url)) as http:
        text = (await http.get("/metrics")).text
    assert 'jetdag_metrics_source{source="kv"} 1' in text and "the audit log did not answer" in text
    assert 'jetdag_runs{state="succeeded"} 1' in text and 'jetdag_tasks{state="succeeded"} 1' in text
    assert "jetdag_task_duration_seconds_bucket" not in text
