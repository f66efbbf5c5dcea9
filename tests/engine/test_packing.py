"""How snapshots and definitions are packed: RunState.packed() is packb(to_dict()) byte for byte and stored()
is that (small) or it compressed (large) after every step, re-encoding only the chunks of tasks a step changed;
large values are stored compressed behind a marker and plain ones still read, and a value too big even
compressed is refused with a message naming it, its size and the limit."""

from __future__ import annotations

import copy
import os
import zlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetdag.engine import state as state_module
from jetdag.engine.events import RunCancel, TaskIgnore
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.nats.setup import Topology, close, connect, ensure
from jetdag.engine.state import RunState, TaskStatus, new_run
from jetdag.engine.stores import packing
from jetdag.engine.stores.defs import Applied, DefStore
from jetdag.engine.stores.runs import RunStore

from .sim import World
from .test_run import workflows


def plain(state: RunState) -> bytes:
    return msgpack.packb(state.to_dict(), use_bin_type=True)


def check(state: RunState) -> None:
    data = state.packed()
    assert data == plain(state)
    assert plain(RunState.from_dict(msgpack.unpackb(data, raw=False), state.spec)) == data
    stored = state.stored()
    assert stored == data if len(data) <= packing.COMPRESS_ABOVE else stored[:1] == packing.MARKER
    assert packing.decompress(stored) == data
    assert packing.decode(stored) == msgpack.unpackb(data, raw=False)  # == to_dict(), but lists for tuples


def blocks(state: RunState) -> list[tuple[bytes | None, list[dict[str, object]]]]:
    """Each chunk's compressed block as last built, with its tasks as they are now."""
    return [(chunk.block, [t.to_dict() for _, t in items]) for chunk, items in state._chunks or []]


def check_reuse(state: RunState, before: list[tuple[bytes | None, list[dict[str, object]]]]) -> int:
    """The chunks whose tasks did not change kept their compressed block (the same object): how many did."""
    kept = 0
    for (block, tasks), (now, now_tasks) in zip(before, blocks(state), strict=True):
        assert now is not None
        if tasks == now_tasks:
            assert now is block, "an unchanged chunk was compressed again"
            kept += 1
    return kept


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workflows(),
    st.data(),
    st.integers(1, 4) | st.just(state_module.CHUNK),
    st.sampled_from([0, 200, packing.COMPRESS_ABOVE]),
)
def test_stored_is_the_plain_encoding_or_it_compressed_after_every_step(
    wf: tuple[WorkflowSpec, dict[tuple[str, int], bool]], data: st.DataObject, chunk: int, threshold: int
) -> None:
    """Small chunks and thresholds, so the runs' few tasks make several chunks and, mostly, compressed values."""
    spec, oracle = wf
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(state_module, "CHUNK", chunk)
        mp.setattr(packing, "COMPRESS_ABOVE", threshold)
        world = World(spec, lambda t, a: oracle[(t, a)])
        world.state.meta = {"who": "me"}
        check(world.state)
        assert len(world.state._chunks or []) == -(-len(spec.tasks) // chunk)
        kept = 0
        for _ in range(300):
            if not world.pool:
                break
            before = blocks(world.state)
            world.deliver(data.draw(st.integers(0, len(world.pool) - 1), label="deliver"))
            check(world.state)
            if threshold < 200:  # always compressed: every chunk has a block
                kept += check_reuse(world.state, before)
        failed = [n for n, t in world.state.tasks.items() if t.status is TaskStatus.FAILED]
        if failed:  # run control touches tasks no result names
            world.pool.append(TaskIgnore(world.run_id, failed[0], world.now))
            world.run_in_order()
            check(world.state)
        world.pool.append(RunCancel(world.run_id, world.now))
        world.run_in_order()
        check(world.state)
        if threshold < 200 and len(spec.tasks) > 2 * chunk:
            assert kept > 0


def test_a_save_compresses_only_the_chunks_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packing, "COMPRESS_ABOVE", 0)
    monkeypatch.setattr(state_module, "CHUNK", 10)
    spec = WorkflowSpec("w", tuple(TaskSpec(f"t{i}", "noop") for i in range(95)))
    state = new_run("R", "w", 3, spec, {}, 5.0)
    check(state)
    first = [chunk.block for chunk, _ in state._chunks or []]
    assert len(first) == 10 and None not in first
    compressed: list[bytes] = []
    deflate = packing.deflate

    def counted(data: bytes, final: bool = False) -> bytes:
        compressed.append(data)
        return deflate(data, final)

    monkeypatch.setattr(packing, "deflate", counted)
    state.tasks["t42"].status = TaskStatus.QUEUED
    state.tasks["t47"].attempt = 1
    state.tasks["t94"].worker = "w1"
    state.seq += 1
    check(state)
    now = [chunk.block for chunk, _ in state._chunks or []]
    assert [a is b for a, b in zip(first, now, strict=True)] == [True] * 4 + [False] + [True] * 4 + [False]
    assert len(compressed) == 4  # the head, the two chunks that changed, the tail
    again = copy.deepcopy(state)  # a copy keeps its chunks' encodings, and its own
    again.tasks["t3"].status = TaskStatus.SUCCEEDED
    check(again)
    check(state)
    assert packing.decode(again.stored()) != packing.decode(state.stored())


def test_packed_sees_every_field_assigned_and_copies() -> None:
    spec = WorkflowSpec("w", tuple(TaskSpec(f"t{i}", "noop") for i in range(20)))
    state = new_run("R", "w", 3, spec, {"p": [1, 2]}, 5.0, meta={"k": "v"})
    check(state)
    task = state.tasks["t7"]
    for key, value in [("status", TaskStatus.RETRYING), ("attempt", 2), ("due", 9.5), ("worker", "w1"),
                       ("error", "boom"), ("result", {"rows": 3}), ("queued_at", 1.0), ("due", None)]:  # fmt: skip
        setattr(task, key, value)
        check(state)
    state.ready, state.rerun_of, state.seq = ["t7"], "OLD", 4
    check(state)
    again = copy.deepcopy(state)
    again.tasks["t3"].status = TaskStatus.SUCCEEDED
    check(again)
    check(state)
    inline = new_run("I", "one", 0, WorkflowSpec("one", (TaskSpec("x", "noop"),)), {}, 1.0, inline=True)
    check(inline)


def test_small_values_stay_plain_and_large_ones_are_compressed() -> None:
    small = {"a": 1}
    assert packing.encode(small) == msgpack.packb(small, use_bin_type=True)
    large = {"tasks": {f"t{i}": {"status": "waiting", "attempt": 0} for i in range(10_000)}}
    raw = msgpack.packb(large, use_bin_type=True)
    stored = packing.encode(large)
    assert len(raw) > packing.COMPRESS_ABOVE and stored[:1] == packing.MARKER and len(stored) < len(raw) // 5
    assert packing.decode(stored) == large == packing.decode(raw)  # values stored plain (before) still read
    assert packing.compress(raw) == stored and packing.decompress(stored) == raw
    with pytest.raises(msgpack.UnpackException):  # no plain msgpack value starts with the marker
        msgpack.unpackb(packing.MARKER + b"\x00")
    assert zlib.decompress(stored[1:], -15) == raw  # a raw deflate stream
    pieces = packing.deflate(raw[:1000]) + packing.deflate(raw[1000:5000]) + packing.deflate(raw[5000:], final=True)
    assert packing.decompress(packing.MARKER + pieces) == raw  # built of pieces, as RunState.stored() does


def big_spec(name: str, n: int) -> WorkflowSpec:
    return WorkflowSpec(name, tuple(TaskSpec(f"task_{i}", "noop", payload={"i": i}) for i in range(n)))


async def test_large_definitions_and_snapshots_go_through_the_stores(nats_url: str) -> None:
    nc = await connect(nats_url, "test")
    try:
        js = nc.jetstream()
        await ensure(js, Topology())
        defs, runs = await DefStore.open(js), await RunStore.open(nc, js)
        spec = big_spec("big", 5_000)
        assert (await defs.apply(spec))[0] is Applied.CREATED
        assert (await defs.kv.get("big")).value[:1] == packing.MARKER
        assert (await defs.apply(spec))[0] is Applied.UNCHANGED
        assert (await DefStore(defs.kv, js).get("big"))[0] == spec

        state = new_run("R1", "big", 1, spec, {}, 1.0)
        revision = await runs.save("R1", state.stored(), 0)
        assert (await runs.kv.get("R1")).value[:1] == packing.MARKER
        state.tasks["task_3"].status = TaskStatus.QUEUED
        revision = await runs.save("R1", state.stored(), revision)
        snapshot, rev = await runs.load("R1")
        assert snapshot == state.to_dict() and rev == revision
        # A plain value written before compression existed reads as it did.
        plain_rev = await runs.kv.update("R1", msgpack.packb({"old": True}, use_bin_type=True), last=revision)
        assert await runs.load("R1") == ({"old": True}, plain_rev)
    finally:
        await close(nc)


async def test_a_value_too_large_even_compressed_is_refused_by_name_size_and_limit(nats_url: str) -> None:
    nc = await connect(nats_url, "test")
    try:
        js = nc.jetstream()
        await ensure(js, Topology())
        defs, runs = await DefStore.open(js), await RunStore.open(nc, js)
        noise = os.urandom(9 * 1024 * 1024)  # random bytes do not compress: still over the 8 MB max_payload
        spec = WorkflowSpec("huge", (TaskSpec("a", "noop", payload=noise),))
        too_big = r"workflow 'huge' \(1 tasks\) does not fit in one NATS message: 9,437,[0-9]+ bytes packed, 9,"
        with pytest.raises(
            packing.ValueTooLarge, match=too_big + r"[0-9,]+ compressed, over NATS max_payload \(8,388,"
        ):
            await defs.apply(spec)
        with pytest.raises(packing.ValueTooLarge, match=r"the snapshot of run R2 does not fit"):
            await runs.save("R2", {"blob": noise}, 0)
    finally:
        await close(nc)
