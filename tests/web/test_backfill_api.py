"""Backfills over HTTP (`POST /api/v1/workflows/{name}/backfill`) and the schedules list, against a real engine."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, Trigger, WorkflowSpec
from jetdag.web.app import create_app
from tests.helpers import eventually

Http = AsyncTestClient[Any]

HOURLY = WorkflowSpec("t_bfapi_hourly", (TaskSpec("a", "noop"),), triggers=(Trigger(cron="0 * * * *"),))
BY_HAND = WorkflowSpec("t_bfapi_by_hand", (TaskSpec("a", "noop"),))
TWO_DAYS = {"from": "2025-01-01T00:00", "to": "2025-01-02T23:59"}  # no zone: UTC; 48 hourly ticks
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()


@pytest.fixture
async def http(nats_url: str, system: System) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def _backfill(http: Http, name: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = await http.post(f"/api/v1/workflows/{name}/backfill", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def test_a_dry_run_lists_the_ticks_a_real_one_starts_them_and_a_repeat_starts_none(
    http: Http, client: Client
) -> None:
    await client.apply(HOURLY)
    preview = await _backfill(http, HOURLY.name, {**TWO_DAYS, "dry_run": True, "meta": {"source": "test"}})
    assert (preview["workflow"], preview["new"], preview["existing"], preview["started"]) == (HOURLY.name, 48, 0, 0)
    assert [r["logical_time"] for r in preview["runs"]] == [START + 3600 * i for i in range(48)]
    assert all(r["exists"] is False and r["meta"] == {"source": "test"} for r in preview["runs"])
    assert await client.runs_list(workflow=HOURLY.name) == []  # a dry run starts nothing

    started = await _backfill(http, HOURLY.name, {**TWO_DAYS, "meta": {"source": "test"}})
    assert (started["new"], started["started"]) == (48, 48)
    assert [r["run_id"] for r in started["runs"]] == [r["run_id"] for r in preview["runs"]]  # what was previewed
    await eventually(lambda: _count(client, HOURLY.name, 48), timeout=20)

    again = await _backfill(http, HOURLY.name, {**TWO_DAYS, "meta": {"source": "test"}})
    assert (again["new"], again["existing"], again["started"]) == (0, 48, 0)
    assert len(await client.runs_list(workflow=HOURLY.name)) == 48


async def _count(client: Client, workflow: str, n: int) -> bool:
    return len(await client.runs_list(workflow=workflow, limit=1000)) == n


async def test_a_workflow_without_a_cron_steps_by_day(http: Http, client: Client) -> None:
    await client.apply(BY_HAND)
    days = await _backfill(http, BY_HAND.name, {"from": "2025-01-01", "to": "2025-01-03T00:00Z", "by": "day",
                                                "dry_run": True})  # fmt: skip
    assert [r["logical_time"] for r in days["runs"]] == [START + 86400 * i for i in range(3)]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"from": "yesterday", "to": "2025-01-02"}, "from", "'from' must be a time"),
        ({"from": "2025-01-01", "to": "nan"}, "to", "'to' must be a time"),
        ({**TWO_DAYS, "by": "week"}, "by", "Invalid enum value 'week'"),
        ({**TWO_DAYS, "start": "2025-01-01"}, None, "unknown field `start`"),
        ({"from": "2025-01-02", "to": "2025-01-01"}, None, "before it starts"),
        ({"from": "2000-01-01", "to": "2025-01-01"}, None, "more than the limit of 10,000"),
        ({**TWO_DAYS, "trigger": "files"}, None, "no clock trigger 'files'"),
    ],
)
async def test_bad_input_is_400_with_the_reason(
    http: Http, client: Client, body: dict[str, Any], field: str | None, words: str
) -> None:
    await client.apply(HOURLY)
    refused = await http.post(f"/api/v1/workflows/{HOURLY.name}/backfill", json={**body, "dry_run": True})
    assert refused.status_code == 400, refused.text
    answer = refused.json()
    assert words in answer["detail"] + " ".join(e["message"] for e in answer.get("extra", []))
    if field is not None:
        assert field in [e["key"] for e in answer["extra"]]
    assert await client.runs_list(workflow=HOURLY.name) == []


async def test_no_cron_and_no_step_is_400_and_an_unknown_workflow_404(http: Http, client: Client) -> None:
    await client.apply(BY_HAND)
    refused = await http.post(f"/api/v1/workflows/{BY_HAND.name}/backfill", json=TWO_DAYS)
    assert refused.status_code == 400 and "no schedule to take ticks from" in refused.json()["detail"]
    missing = await http.post("/api/v1/workflows/t_bfapi_nobody/backfill", json=TWO_DAYS)
    assert missing.status_code == 404 and "t_bfapi_nobody" in missing.json()["detail"]


async def test_the_endpoints_are_in_the_openapi_schema(http: Http) -> None:
    schema = (await http.get("/schema/openapi.json")).json()
    post = schema["paths"]["/api/v1/workflows/{name}/backfill"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    props = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert {"from", "to", "by", "trigger", "params", "meta", "dry_run"} <= set(props)
    assert "get" in schema["paths"]["/api/v1/schedules"]


async def test_the_schedules_list_holds_every_triggered_workflow_with_its_triggers(http: Http, client: Client) -> None:
    await client.apply(HOURLY)
    await client.apply(BY_HAND)
    listed = (await http.get("/api/v1/schedules")).json()
    assert [s["workflow"] for s in listed] == [HOURLY.name]  # nothing but people start BY_HAND
    [trigger] = listed[0]["triggers"]
    assert (trigger["kind"], trigger["what"], trigger["overlap"]) == ("cron", "0 * * * *", "allow")
