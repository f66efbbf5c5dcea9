"""The schedule switch over HTTP and on the workflow pages, against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, Trigger, WorkflowSpec
from jetdag.web.app import create_app

Http = AsyncTestClient[Any]

NIGHTLY = WorkflowSpec(
    "t_schedapi_nightly", (TaskSpec("a", "noop"),), triggers=(Trigger(cron="0 2 * * *", timezone="Europe/Paris"),)
)
BY_HAND = WorkflowSpec("t_schedapi_by_hand", (TaskSpec("a", "noop"),))


@pytest.fixture
async def http(nats_url: str, system: System) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def test_toggle_switches_off_and_on_with_the_next_fire(http: Http, client: Client) -> None:
    await client.apply(NIGHTLY)
    shown = (await http.get(f"/api/v1/schedules/{NIGHTLY.name}")).json()
    assert shown["enabled"] is True and shown["next_fire"].endswith(("+01:00", "+02:00"))  # Paris time
    off = await http.post(f"/api/v1/schedules/{NIGHTLY.name}/toggle")
    assert off.status_code == 200, off.text
    assert off.json()["enabled"] is False and off.json()["next_fire"] is None
    assert (await client.schedule(NIGHTLY.name))["enabled"] is False  # kept in jd_schedules
    on = await http.post(f"/api/v1/schedules/{NIGHTLY.name}/toggle", json={"enabled": True})
    assert on.json()["enabled"] is True and on.json()["changed_by"] == "http"


async def test_unknown_unscheduled_and_bad_bodies_are_refused(http: Http, client: Client) -> None:
    await client.apply(BY_HAND)
    assert (await http.post("/api/v1/schedules/t_schedapi_nobody/toggle")).status_code == 404
    refused = await http.post(f"/api/v1/schedules/{BY_HAND.name}/toggle")
    assert refused.status_code == 400 and "has no schedule" in refused.json()["detail"]
    await client.apply(NIGHTLY)
    bad = await http.post(f"/api/v1/schedules/{NIGHTLY.name}/toggle", json={"enabled": "yes"})
    assert bad.status_code == 400 and "'enabled' must be true or false" in bad.json()["detail"]


async def test_the_pages_show_the_switch_and_the_button_flips_it(http: Http, client: Client) -> None:
    await client.apply(NIGHTLY)
    listing = (await http.get("/workflows")).text
    assert f'id="schedule-{NIGHTLY.name}"' in listing and "switch off" in listing
    page = (await http.get(f"/workflows/{NIGHTLY.name}")).text
    assert "next 20" in page  # the next fire's date
    fragment = await http.post(f"/workflows/{NIGHTLY.name}/schedule")
    assert fragment.status_code == 200, fragment.text
    assert "switch on" in fragment.text and "by dashboard" in fragment.text
    assert (await client.schedule(NIGHTLY.name))["enabled"] is False
