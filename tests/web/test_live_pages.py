"""The live parts of the workflow and run pages: their SSE handlers called in this loop against a real engine
and worker (Litestar's test client buffers a response to its end, and a page's stream has none), the hub's
progress bookkeeping against a real nats-server, and the run page's ignore button on a failed run."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from litestar import Litestar
from litestar.datastructures import State
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.handlers import Fail, TaskContext, handler
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from jetdag.web.app import create_app
from jetdag.web.live import Hub
from jetdag.web.pages.runs import run_live
from jetdag.web.pages.workflows import workflow_live
from tests.helpers import eventually

Http = AsyncTestClient[Any]

_gates: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}


@handler("t_live_report")
async def report(ctx: TaskContext) -> str:
    started, release = _gates.setdefault(ctx.params["gate"], (asyncio.Event(), asyncio.Event()))
    ctx.progress(done=3, total=10, message="3 of 10 files")
    started.set()
    await release.wait()
    return "done"


@handler("t_live_fail")
async def fail(ctx: TaskContext) -> None:
    raise Fail("bad input")


REPORTING = WorkflowSpec(
    "t_live_reporting", (TaskSpec("load", "t_live_report"), TaskSpec("after", "noop", depends_on=("load",)))
)
FAILING = WorkflowSpec(
    "t_live_failing",
    (TaskSpec("a", "t_live_fail"), TaskSpec("b", "noop", depends_on=("a",))),
    retry=RetryPolicy(max_attempts=1),
)
MIXED = WorkflowSpec("t_live_mixed", (TaskSpec("a", "t_live_fail"), TaskSpec("slow", "t_live_report")))


class Events:
    """A page's SSE messages, read the way its EventSource would; pings skipped."""

    def __init__(self, response: ServerSentEvent) -> None:
        self._messages: Any = response.iterator.content_async_iterator  # type: ignore[attr-defined]

    async def next(self, timeout: float = 10.0) -> ServerSentEventMessage:
        while True:
            message = await asyncio.wait_for(anext(self._messages), timeout)
            assert isinstance(message, ServerSentEventMessage)
            if message.comment is None:
                return message

    async def until(
        self, pred: Callable[[ServerSentEventMessage], bool], timeout: float = 15.0
    ) -> ServerSentEventMessage:
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if pred(message):
                return message

    async def close(self) -> None:
        await self._messages.aclose()  # the stream's `finally`: its hub subscription goes


@pytest.fixture
async def hub(client: Client) -> AsyncIterator[Hub]:
    running = Hub(client)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def app(nats_url: str) -> Litestar:
    return create_app(nats_url)  # only for its template engine: the handlers get this test's client and hub


def _handler_args(app: Litestar, client: Client, hub: Hub) -> dict[str, Any]:
    return {"state": State({"client": client, "hub": hub}), "request": SimpleNamespace(app=app)}


async def test_the_workflow_page_lists_a_new_run_live(app: Litestar, client: Client, hub: Hub) -> None:
    await client.apply(REPORTING)
    await client.apply(FAILING)
    other = await client.submit(FAILING.name)
    response = await workflow_live.fn(**_handler_args(app, client, hub), name=REPORTING.name)
    events = Events(response)
    try:
        first = await events.next()
        assert first.event == "runs" and "No runs." in str(first.data)  # the current table, at once
        run_id = await client.submit(REPORTING.name, {"gate": "wf-live"})
        shown = await events.until(lambda m: f'href="/runs/{run_id}"' in str(m.data))
        assert shown.event == "runs"
        assert other not in str(shown.data)  # another workflow's runs stay off this page
        assert hub.subscribers and all(s.workflow == REPORTING.name for s in hub.subscribers)
    finally:
        await events.close()
        _gates.setdefault("wf-live", (asyncio.Event(), asyncio.Event()))[1].set()
    assert hub.clients == 0


async def test_the_run_page_shows_a_handlers_progress_live_and_drops_it_when_the_task_ends(
    app: Litestar, client: Client, hub: Hub
) -> None:
    await client.apply(REPORTING)
    started, release = _gates.setdefault("progress", (asyncio.Event(), asyncio.Event()))
    run_id = await client.submit(REPORTING.name, {"gate": "progress"})
    await asyncio.wait_for(started.wait(), 15)
    response = await run_live.fn(**_handler_args(app, client, hub), run_id=run_id)
    events = Events(response)
    try:
        # The handler's own report (worker -> jd.evt.<p>.<run>.info -> hub), in the full fragment or as a
        # progress event, whichever comes first: the page may open before or after the report arrives.
        def reported(m: ServerSentEventMessage) -> bool:
            return "3/10 (30%)" in str(m.data) and "3 of 10 files" in str(m.data)

        await events.until(reported)
        assert hub.progress_of(run_id)["load"]["done"] == 3

        # A report between steps goes out alone, as spans the page swaps in by id.
        body = {"v": 1, "k": "task.progress", "run": run_id, "task": "load", "attempt": 1, "ts": time.time(),
                "worker": "w", "data": {"done": 7, "total": 10}}  # fmt: skip
        subject = f"{S.event_subject(S.partition_of(run_id), run_id)}.info"
        sent = time.monotonic()
        await client.nc.publish(subject, msgpack.packb(body))
        update = await events.until(lambda m: "7/10" in str(m.data))
        assert update.event == "progress"
        assert re.fullmatch(r'\s*<span id="p-load" class="progress" hx-swap-oob="true">.*</span>\s*', str(update.data))
        assert '<progress max="100" value="70.0"' in str(update.data)
        assert time.monotonic() - sent < 5

        # The task ends: the next full render has no progress, and late news of that attempt is not kept.
        release.set()
        done = await events.until(lambda m: m.event == "run" and 'data-status="succeeded"' in str(m.data))
        assert 'id="p-load" class="progress"></span>' in str(done.data)
        await client.nc.publish(subject, msgpack.packb({**body, "data": {"done": 9, "total": 10}}))
        marker = {**body, "run": "AFTER", "task": "x"}  # sent after it on the same connection: seen after it
        await client.nc.publish(subject, msgpack.packb(marker))
        await eventually(lambda: "x" in hub.progress_of("AFTER"))
        assert hub.progress_of(run_id) == {}
    finally:
        await events.close()
        release.set()


async def test_many_reports_cost_one_queued_marker_and_the_latest_is_kept(client: Client) -> None:
    hub = Hub(client, queue_size=4)
    await hub.start()
    try:
        viewer = hub.subscribe(run="RUNP", progress=True)
        others = hub.subscribe(run="RUNQ", progress=True), hub.subscribe(run="RUNP"), hub.subscribe()
        subject = "jd.evt.2.RUNP.info"
        for done in range(1, 101):  # far more reports than the queue holds
            task = "a" if done % 2 else "b"
            body = {"v": 1, "k": "task.progress", "run": "RUNP", "task": task, "attempt": 1, "data": {"done": done}}
            await client.nc.publish(subject, msgpack.packb(body))
        await client.nc.publish(subject, msgpack.packb({"v": 1, "k": "task.audit", "run": "RUNP", "task": "c",
                                                        "attempt": 1, "data": {"x": 1}}))  # fmt: skip
        await client.nc.publish(subject, b"\xc1 not msgpack")
        await client.nc.flush()

        async def both_seen() -> dict[str, Any]:
            latest = hub.progress_of("RUNP")
            assert {t: p["done"] for t, p in latest.items()} == {"a": 99, "b": 100}, latest
            return latest

        await eventually(both_seen)
        assert viewer.queue.qsize() == 1 and not viewer.dropped  # one marker for a hundred reports
        assert (await viewer.next(1)) == {"kind": "progress", "run": "RUNP"}
        assert viewer.take_progress() == {"a", "b"} and viewer.take_progress() == set()
        assert all(s.queue.empty() for s in others)  # another run's viewer, and streams that did not ask
        assert hub.dropped == 0

        # A step that ends attempt 1 of `a` ends its progress; `b` runs on. A retry's progress is shown again.
        step = {"v": 1, "k": "run.step", "run": "RUNP", "seq": 5, "status": "running",
                "transitions": [{"task": "a", "attempt": 1, "status": "retrying", "ts": 1.0}]}  # fmt: skip
        await client.nc.publish("jd.evt.2.RUNP.step", msgpack.packb(step))
        await eventually(lambda: set(hub.progress_of("RUNP")) == {"b"})
        retry = {"v": 1, "k": "task.progress", "run": "RUNP", "task": "a", "attempt": 2, "data": {"message": "again"}}
        await client.nc.publish(subject, msgpack.packb(retry))
        await eventually(lambda: hub.progress_of("RUNP").get("a", {}).get("message") == "again")
        assert "c" not in hub.progress_of("RUNP")  # an audit event is no progress
    finally:
        await hub.stop()
    with pytest.raises(ValueError, match="progress is per run"):
        hub.subscribe(progress=True)


@pytest.fixture
async def http(nats_url: str, system: System) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def test_a_failed_run_offers_to_ignore_its_failed_task_and_resume(http: Http, client: Client) -> None:
    await client.apply(FAILING)
    run_id = await client.submit(FAILING.name)
    assert (await client.wait(run_id, timeout=15))["status"] == "failed"
    page = (await http.get(f"/runs/{run_id}")).text
    button = re.search(r'<button[^>]*tasks/a/ignore"[^>]*>([^<]*)</button>', page)
    assert button is not None and button.group(1) == "ignore &amp; resume run"
    assert "resume the failed run" in button.group(0) and "hx-confirm" in button.group(0)
    assert "tasks/b/ignore" not in page  # b was skipped, not failed: nothing to ignore

    response = await http.post(f"/api/v1/runs/{run_id}/tasks/a/ignore", headers=_SAME_ORIGIN)
    assert response.status_code == 202, response.text

    async def resumed() -> dict[str, Any]:  # `wait` would answer at once: the run is still failed for a moment
        view = await client.status(run_id)
        assert view["status"] == "succeeded" and view["tasks"]["b"]["status"] == "succeeded", view
        return view

    await eventually(resumed, timeout=15)
    assert "/ignore" not in (await http.get(f"/runs/{run_id}")).text


async def test_a_live_run_offers_ignore_and_a_cancelled_one_does_not(http: Http, client: Client) -> None:
    await client.apply(MIXED)
    started, release = _gates.setdefault("mixed", (asyncio.Event(), asyncio.Event()))
    run_id = await client.submit(MIXED.name, {"gate": "mixed"})
    await asyncio.wait_for(started.wait(), 15)

    async def a_failed() -> bool:
        view = await client.status(run_id)
        assert view["tasks"]["a"]["status"] == "failed" and view["status"] == "running", view
        return True

    await eventually(a_failed)
    button = re.search(r'<button[^>]*tasks/a/ignore"[^>]*>([^<]*)</button>', (await http.get(f"/runs/{run_id}")).text)
    assert button is not None and button.group(1) == "ignore"  # the run goes on anyway: nothing to resume
    await client.cancel(run_id)
    release.set()
    assert (await client.wait(run_id, timeout=15))["status"] == "cancelled"
    assert "/ignore" not in (await http.get(f"/runs/{run_id}")).text  # the engine would refuse it


_SAME_ORIGIN = {"Origin": "http://testserver.local", "Sec-Fetch-Site": "same-origin", "HX-Request": "true"}
