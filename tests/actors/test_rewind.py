"""A partition's new owner rewinds the consumer to its ack floor when that is cheap (engine/nats/rewind.py).

Real nats-server: these also pin what its consumer reset does (ADR-60), which the module relies on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from jetdag.actors.partition import ACK_WAIT, partition_consumer_config
from jetdag.engine import subjects as S
from jetdag.engine.nats.rewind import REWIND_MAX_SPAN, rewind_span, rewind_unacked
from jetdag.engine.nats.setup import close, connect, ensure

P = 3
CONSUMER = S.partition_consumer(P)


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await connect(nats_url, "t-rewind")
    js = nc.jetstream()
    await ensure(js)
    await js.add_consumer(S.EVENTS, config=partition_consumer_config(P))
    yield js
    await close(nc)


async def publish(js: JetStreamContext, n: int) -> list[int]:
    """n events of partition P, each followed by a message the consumer does not see (a step record,
    another partition's event): the stream sequences of the events."""
    seqs = []
    for i in range(n):
        seqs.append((await js.publish(S.event_subject(P, f"run{i}"), b"e")).seq)
        await js.publish(S.step_subject(P, f"run{i}"), b"step")
        await js.publish(S.event_subject(P + 1, f"run{i}"), b"other")
    return seqs


async def take(nats_url: str, n: int) -> tuple[NATS, dict[int, Msg]]:
    """An owner's connection that took n messages (and settles none yet): stream seq -> message."""
    nc = await connect(nats_url, "t-owner")
    sub = await nc.jetstream().pull_subscribe_bind(CONSUMER, stream=S.EVENTS)
    msgs = await sub.fetch(n, timeout=5)
    assert len(msgs) == n
    return nc, {m.metadata.sequence.stream: m for m in msgs}


async def state(js: JetStreamContext) -> js_api.ConsumerInfo:
    """What the partition owner sees when it starts: add_consumer answers with the consumer's state."""
    return await js.add_consumer(S.EVENTS, config=partition_consumer_config(P))


async def redelivered_now(nats_url: str, n: int) -> list[Msg]:
    """What a new owner gets: the n messages it waits for must come well before AckWait."""
    nc = await connect(nats_url, "t-next")
    try:
        sub = await nc.jetstream().pull_subscribe_bind(CONSUMER, stream=S.EVENTS)
        out: list[Msg] = []
        while len(out) < n:  # fetch returns what has arrived; the timeout is the deadline
            out += await sub.fetch(n - len(out), timeout=ACK_WAIT / 3)
        for m in out:
            await m.ack()
        return out
    finally:
        await close(nc)


async def test_a_rewind_sends_back_at_once_everything_above_the_ack_floor(
    js: JetStreamContext, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    seqs = await publish(js, 10)
    old, held = await take(nats_url, 10)
    for s in seqs[0], seqs[1], seqs[4], seqs[5]:
        await held[s].ack_sync()  # handled: 1 and 2 move the floor, 5 and 6 are acked above it
    await held[seqs[2]].nak(delay=60)  # deferred (a retry timer), holding the floor back
    await old.flush()
    await close(old)  # the owner dies holding 4, 7, 8, 9 and 10

    info = await state(js)
    floor = seqs[2] - 1  # just below the first message not acked
    assert info.ack_floor and info.delivered
    assert (info.num_ack_pending, info.ack_floor.stream_seq, info.delivered.stream_seq) == (6, floor, seqs[9])
    assert rewind_span(info) == seqs[9] - floor  # counts the step records and the other partition too
    with caplog.at_level(logging.INFO, logger="jetdag.engine.nats.rewind"):
        assert await rewind_unacked(js, S.EVENTS, info)
    assert "rewound" in caplog.text

    back = await redelivered_now(nats_url, 8)
    # All of 3..10, in order: the held ones, the deferred one without its delay, and those acked above the
    # floor (duplicates); each counts as a first delivery again.
    assert [m.metadata.sequence.stream for m in back] == seqs[2:]
    assert {m.metadata.num_delivered for m in back} == {1}
    after = await js.consumer_info(S.EVENTS, CONSUMER)
    assert (after.num_ack_pending, after.ack_floor.stream_seq) == (0, seqs[9])


async def test_no_rewind_when_it_would_replay_more_than_the_bound(
    js: JetStreamContext, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A long retry timer holds the floor while the runs beside it went on: replaying all of that costs more."""
    seqs = await publish(js, 12)
    old, held = await take(nats_url, 12)
    await held[seqs[0]].nak(delay=60)
    for s in seqs[1:-1]:
        await held[s].ack_sync()
    await old.flush()
    await close(old)  # held: the last one

    info = await state(js)
    assert info.num_ack_pending == 2
    with caplog.at_level(logging.INFO, logger="jetdag.engine.nats.rewind"):
        assert not await rewind_unacked(js, S.EVENTS, info, max_span=rewind_span(info) - 1)
    assert "not rewinding" in caplog.text
    after = await js.consumer_info(S.EVENTS, CONSUMER)
    assert (after.num_ack_pending, after.delivered.stream_seq) == (2, seqs[-1])  # untouched: AckWait's job
    # The same state with the default bound is cheap.
    assert rewind_span(info) <= REWIND_MAX_SPAN
    assert await rewind_unacked(js, S.EVENTS, info)
    assert [m.metadata.sequence.stream for m in await redelivered_now(nats_url, 12)] == seqs


async def test_nothing_unacked_means_no_rewind(js: JetStreamContext, nats_url: str) -> None:
    assert not await rewind_unacked(js, S.EVENTS, await state(js))  # a fresh partition
    seqs = await publish(js, 3)
    old, held = await take(nats_url, 3)
    for s in seqs:
        await held[s].ack_sync()
    await close(old)  # a clean hand-over: everything settled
    info = await state(js)
    assert not await rewind_unacked(js, S.EVENTS, info)
    assert (await js.consumer_info(S.EVENTS, CONSUMER)).delivered.stream_seq == seqs[-1]


async def test_a_failed_rewind_is_logged_and_left_to_ack_wait(
    js: JetStreamContext, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await publish(js, 2)
    old, _ = await take(nats_url, 2)
    await close(old)
    info = await state(js)
    await js.delete_consumer(S.EVENTS, CONSUMER)  # nats-server 2.15.1 does not answer a reset of it: a timeout
    with caplog.at_level(logging.INFO, logger="jetdag.engine.nats.rewind"):
        assert not await rewind_unacked(js, S.EVENTS, info, timeout=0.5)
    assert "rewind failed" in caplog.text
