"""`conf`: one test against each worker implementation (python, node, and JETDAG_CONFORMANCE_WORKER if set)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jetdag.engine.nats.setup import close, connect, ensure
from tests.conformance.harness import Conformance, Implementation, implementations


@pytest.fixture(params=implementations(), ids=lambda impl: impl.name)
def impl(request: pytest.FixtureRequest) -> Implementation:
    implementation: Implementation = request.param
    return implementation


@pytest.fixture
async def conf(nats_url: str, impl: Implementation, tmp_path: Path) -> AsyncIterator[Conformance]:
    """jetdag's streams and buckets on a fresh NATS, and no worker yet: the test starts it (`conf.start()`)."""
    nc = await connect(nats_url, "conformance")
    js = nc.jetstream()
    await ensure(js)
    harness = Conformance(impl, nats_url, nc, js, tmp_path)
    try:
        yield harness
    finally:
        harness.stop_all()
        await close(nc)
