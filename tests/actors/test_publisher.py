"""The engine's JetStream publisher and the writes built on it, against a real nats-server."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from jetdag.actors.run import FRESH, _fresh
from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import StaleOwner
from jetdag.engine.events import RunSubmitted, TaskSucceeded
from jetdag.engine.ids import new_run_id
from jetdag.engine.messages import MSG_ID, encode_event
from jetdag.engine.model import one_task_spec
from jetdag.engine.nats.publisher import Publisher, PublishRefused, StreamUnavailable, acked
from jetdag.engine.nats.setup import close, connect, ensure
from jetdag.engine.stores.runs import RunStore
from tests.helpers import eventually


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await connect(nats_url, "t_publisher")
    await ensure(conn.jetstream())
    yield conn
    await close(conn)


async def test_each_publish_resolves_to_its_stream_sequence(nc: NATS) -> None:
    publisher = Publisher(nc)
    subject = S.event_subject(0, new_run_id())
    futures = [await publisher.publish(subject, b"x", {"Nats-Msg-Id": f"m{i}"}) for i in range(3)]
    first, second, third = await acked(futures)
    assert (second, third) == (first + 1, first + 2)
    again = await acked([await publisher.publish(subject, b"x", {"Nats-Msg-Id": "m0"})])
    assert again == [first]  # a duplicate is acknowledged with the sequence it was stored at
    await publisher.stop()


async def test_a_subject_no_stream_takes_is_refused_by_name(nc: NATS) -> None:
    publisher = Publisher(nc)
    with pytest.raises(StreamUnavailable, match=r"publish to jd\.nowhere\.at\.all: no JetStream stream") as caught:
        await acked([await publisher.publish("jd.nowhere.at.all", b"x")])
    assert isinstance(caught.value, PublishRefused) and isinstance(caught.value, NatsError)  # retried as nats-py's
    await publisher.stop()


async def test_snapshot_writes_are_compare_and_set(nc: NATS) -> None:
    store = await RunStore.open(nc, nc.jetstream())
    run_id = new_run_id()
    first = await store.save(run_id, {"status": "pending"}, 0)
    with pytest.raises(StaleOwner):
        await store.save(run_id, {"status": "pending"}, 0)  # it exists: a create must not overwrite it
    second = await store.save(run_id, {"status": "running"}, first)
    with pytest.raises(StaleOwner):
        await store.save(run_id, {"status": "lost"}, first)  # a writer behind the stored revision is fenced
    assert await store.load(run_id) == ({"status": "running"}, second)


def _delivered(stored: float, deliveries: int = 1) -> Any:
    metadata = SimpleNamespace(timestamp=SimpleNamespace(timestamp=lambda: stored), num_delivered=deliveries)
    return SimpleNamespace(metadata=metadata)


def test_only_a_first_delivery_of_a_new_ids_submission_skips_the_read() -> None:
    now = time.time()
    run_id = new_run_id(now - 1)
    submitted = RunSubmitted(run_id, "wf", 1, {}, now)
    assert _fresh(submitted, _delivered(now - 0.5), now)
    assert not _fresh(submitted, _delivered(now - 0.5, deliveries=2), now)  # redelivered: maybe handled before
    assert not _fresh(submitted, _delivered(now - 2 * FRESH), now)  # stored long after the id was made
    assert not _fresh(submitted, _delivered(now - 0.5), now + 2 * FRESH)  # handled long after it was stored
    assert not _fresh(RunSubmitted("nightly-2026-11-23", "wf", 1, {}, now), _delivered(now), now)  # chosen by hand
    assert not _fresh(TaskSucceeded(run_id, "a", 1, now), _delivered(now), now)


async def test_a_run_submitted_again_as_new_is_read_and_left_as_it_is(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer rewind delivers a handled submission again, numbered 1: the actor takes it for a new run,
    its create fails, and it reads the snapshot instead of crashing or starting the run over."""
    async with System(nats_url, concurrency=4, idle_timeout=0.05), await Client.connect(nats_url) as client:
        run_id = await client.enqueue("noop")
        await client.wait(run_id, timeout=20)
        stored = await client.runs.load(run_id)
        again = RunSubmitted(run_id, "noop", 0, {}, time.time(), spec=one_task_spec("noop", "default", None, 5))
        subject = S.event_subject(S.partition_of(run_id), run_id)
        sent = 0

        async def resubmitted() -> bool:
            # Until one reaches a fresh actor: while the run's actor lives, it ignores them as it should.
            nonlocal sent
            sent += 1
            await client.js.publish(subject, encode_event(again), headers={MSG_ID: f"{run_id}:again:{sent}"})
            return "submitted again" in caplog.text

        with caplog.at_level(logging.INFO, logger="jetdag.actors.run"):
            await eventually(resubmitted, interval=0.3)  # longer than the idle timeout: the actor passivates
        assert await client.runs.load(run_id) == stored
        assert "crashed" not in caplog.text


async def test_a_publish_no_one_acknowledges_times_out(nc: NATS) -> None:
    await nc.subscribe("t.silent")  # someone listens, so no "no responders", but nobody acknowledges
    publisher = Publisher(nc, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"publish to t\.silent: no ack"):
        await acked([await publisher.publish("t.silent", b"x")])
    assert time.monotonic() - started < 2
    assert not publisher._pending  # nothing left behind
