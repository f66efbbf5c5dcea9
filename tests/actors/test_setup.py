"""Streams and buckets are declared idempotently; a mismatching stream is reported, never changed."""

from __future__ import annotations

import pytest
from nats.js import api as js_api

from jetdag.engine.errors import ConfigError
from jetdag.engine.nats.setup import close, connect, ensure


async def test_ensure_twice_reuses_what_exists(nats_url: str) -> None:
    nc = await connect(nats_url, "t")
    js = nc.jetstream()
    await ensure(js)
    await ensure(js)  # a restart finds everything as it left it
    assert {s.config.name for s in await js.streams_info()} >= {"JD_TASKS", "JD_EVENTS", "JD_INBOX", "JD_DLQ"}
    await close(nc)


async def test_a_stream_with_other_settings_is_reported_not_changed(nats_url: str) -> None:
    nc = await connect(nats_url, "t")
    js = nc.jetstream()
    await js.add_stream(name="JD_TASKS", subjects=["jd.task.>"], retention=js_api.RetentionPolicy.LIMITS)
    with pytest.raises(ConfigError, match=r"stream JD_TASKS exists with retention='limits'.*workqueue"):
        await ensure(js)
    assert (await js.stream_info("JD_TASKS")).config.retention == js_api.RetentionPolicy.LIMITS
    await close(nc)
