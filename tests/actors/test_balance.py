"""Engines split the partitions evenly, a joining engine gets its share one partition at a time, and a
stopping engine's share goes to the others at once."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.balance import share
from jetdag.engine.nats.setup import Topology
from jetdag.engine.stores.leases import LeaseStore, presence_key
from tests.helpers import eventually

FAST = Topology(lease_ttl=1.5)  # rounds every 0.5 s: a handover of 8 partitions takes seconds, not 16


@given(st.integers(1, 64), st.sets(st.text(min_size=1, max_size=8), min_size=1, max_size=10))
def test_the_shares_of_a_roster_add_up_to_every_partition_and_differ_by_at_most_one(
    partitions: int, engines: set[str]
) -> None:
    shares = [share(partitions, engines, e) for e in engines]
    assert sum(shares) == partitions
    assert max(shares) - min(shares) <= 1


def test_an_engine_alone_takes_every_partition_and_an_unlisted_one_counts_itself() -> None:
    assert share(16, [], "a") == 16
    assert share(16, ["b"], "a") == 8
    assert share(16, ["a", "b", "c"], "a") == 6 and share(16, ["a", "b", "c"], "c") == 5


def test_any_engine_id_makes_a_valid_roster_key() -> None:
    assert presence_key("web-1.example.com/7 ü") == "engine.web-1_example_com_7__"


async def holders(system: System) -> Counter[str]:
    assert system.nc is not None
    kv = await system.nc.jetstream().key_value(S.LEASES_KV)
    out: Counter[str] = Counter()
    for p in range(S.DEFAULT_PARTITIONS):
        entry = await kv.get(S.lease_key(p))
        out[(entry.value or b"").decode()] += 1
    return out


async def test_a_joining_engine_gets_half_one_partition_at_a_time_and_a_leaving_one_hands_all_back(
    nats_url: str,
) -> None:
    async with System(nats_url, engine_id="eng-a", topology=FAST) as a:
        assert a.engine is not None and len(a.engine.held) == S.DEFAULT_PARTITIONS
        seen: list[int] = []  # how many partitions eng-a held at each look: it may only ever step down by one

        async with System(nats_url, engine_id="eng-b", topology=FAST) as b:
            assert b.engine is not None

            async def balanced() -> bool:
                assert a.engine is not None and b.engine is not None
                seen.append(len(a.engine.held))
                return len(a.engine.held) == len(b.engine.held) == S.DEFAULT_PARTITIONS // 2

            await eventually(balanced, timeout=30, interval=0.02)
            assert await holders(a) == {"eng-a": 8, "eng-b": 8}
            assert all(x - y <= 1 for x, y in pairwise(seen)), seen
            assert a.engine.held.keys().isdisjoint(b.engine.held)

        # eng-b stopped cleanly: it released its leases and left the roster, so eng-a takes them within a round.
        async def all_back() -> bool:
            assert a.engine is not None
            return len(a.engine.held) == S.DEFAULT_PARTITIONS

        await eventually(all_back, timeout=FAST.lease_ttl)
        assert a.nc is not None
        assert await LeaseStore(await a.nc.jetstream().key_value(S.LEASES_KV), a.nc.jetstream()).engines() == {"eng-a"}
