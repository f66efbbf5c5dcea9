"""A workflow page's Schedule and Backfill sections, and the backfill form's fragments, against a real engine."""

from __future__ import annotations

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

HOURLY = WorkflowSpec(
    "t_bfpage_hourly", (TaskSpec("a", "noop"),), triggers=(Trigger(cron="0 * * * *", timezone="Europe/Paris"),)
)
BY_HAND = WorkflowSpec("t_bfpage_by_hand", (TaskSpec("a", "noop"),))
FORM = {"from": "2025-01-01T00:00", "to": "2025-01-02T23:59", "by": "", "meta": "source=page\nbatch=3"}
PREVIEW = {**FORM, "dry_run": "true"}
TWO_DAYS = {"from": FORM["from"], "to": FORM["to"]}


@pytest.fixture
async def http(nats_url: str, system: System) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def test_the_page_lists_the_triggers_and_switching_off_clears_their_next_fire(http: Http, client: Client) -> None:
    await client.apply(HOURLY)
    page = (await http.get(f"/workflows/{HOURLY.name}")).text
    assert "<h2>Schedule</h2>" in page and 'id="trigger-cron"' in page
    assert "<code>0 * * * *</code>" in page and "Europe/Paris" in page and "never" in page
    assert f'hx-post="/workflows/{HOURLY.name}/schedule?section=true"' in page
    section = await http.post(f"/workflows/{HOURLY.name}/schedule?section=true")
    assert section.status_code == 200, section.text
    assert section.text.lstrip().startswith('<div id="schedule-section"')  # the whole section, for its target
    assert "switch on" in section.text and ">off<" in section.text


async def test_a_page_without_a_schedule_has_a_backfill_form_stepping_by_day(http: Http, client: Client) -> None:
    await client.apply(BY_HAND)
    page = (await http.get(f"/workflows/{BY_HAND.name}")).text
    assert "<h2>Schedule</h2>" not in page and 'id="backfill-preview"' in page
    assert "every tick of the cron" not in page and '<option value="day" selected>' in page


async def test_the_form_previews_then_starts_what_it_previewed(http: Http, client: Client) -> None:
    await client.apply(HOURLY)
    preview = await http.post(f"/workflows/{HOURLY.name}/backfill", data={**FORM, "dry_run": "true"})
    assert preview.status_code == 200, preview.text
    assert "<strong>48 runs</strong> from 2025-01-01 00:00 to 2025-01-02 23:00 UTC" in preview.text
    assert '<button type="submit" id="backfill-start">Start 48 runs</button>' in preview.text
    assert '<input type="hidden" name="meta" value="source=page\nbatch=3">' in preview.text
    assert await client.runs_list(workflow=HOURLY.name) == []

    started = await http.post(f"/workflows/{HOURLY.name}/backfill", data=FORM)  # the Start button's form
    assert "Started 48 runs." in started.text and started.text.count('<a href="/runs/') == 48
    runs = await eventually(lambda: _runs(client, 48), timeout=20)
    assert {f"/runs/{r['run_id']}" for r in runs} <= set(started.text.split('"'))  # the links are to those runs
    view = await client.status(runs[0]["run_id"])
    assert view["meta"] == {"source": "page", "batch": 3}  # values that parse as JSON are JSON

    again = await http.post(f"/workflows/{HOURLY.name}/backfill", data={**FORM, "dry_run": "true"})
    assert "48 new" not in again.text and "0 new, 48 exist already" in again.text
    assert 'id="backfill-start" disabled' in again.text


async def _runs(client: Client, n: int) -> list[dict[str, Any]]:
    runs = await client.runs_list(workflow=HOURLY.name, limit=1000)
    return runs if len(runs) == n else []


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({**FORM, "meta": "just words"}, "meta line 1: &#39;just words&#39; is not key=value"),
        ({**FORM, "from": "soon"}, "&#39;from&#39; must be a time"),
        ({**FORM, "by": "week"}, "Invalid enum value &#39;week&#39;"),
        ({**FORM, "from": "2025-01-03T00:00"}, "before it starts"),
    ],
)
async def test_the_form_says_why_it_cannot_backfill(
    http: Http, client: Client, form: dict[str, str], words: str
) -> None:
    await client.apply(HOURLY)
    answer = await http.post(f"/workflows/{HOURLY.name}/backfill", data={**form, "dry_run": "true"})
    assert answer.status_code == 200 and 'role="alert"' in answer.text
    assert words in answer.text, answer.text


async def test_another_sites_page_cannot_start_a_backfill_and_the_dashboard_can(http: Http, client: Client) -> None:
    await client.apply(HOURLY)
    cross_site = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    by_form = await http.post(f"/workflows/{HOURLY.name}/backfill", data=FORM, headers=cross_site)
    by_api = await http.post(f"/api/v1/workflows/{HOURLY.name}/backfill", json=TWO_DAYS, headers=cross_site)
    for refused in (by_form, by_api):
        assert refused.status_code == 403 and "cross-origin request refused" in refused.text, refused.url
    assert await client.runs_list(workflow=HOURLY.name) == []
    same_origin = {"Origin": "http://testserver.local", "Sec-Fetch-Site": "same-origin", "HX-Request": "true"}
    by_page = await http.post(f"/workflows/{HOURLY.name}/backfill", data=PREVIEW, headers=same_origin)
    assert by_page.status_code == 200 and "Start 48 runs" in by_page.text
