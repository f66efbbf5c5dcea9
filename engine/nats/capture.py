"""Where the messages of an `on_message` trigger wait until an engine turns them into runs.

A subject no stream holds yet is added to the stream `JD_TRIGGERS` (created on first use), so a message
published there with a plain `nats pub` is stored even while no engine runs. A subject that one of your
own streams already holds is read from that stream instead: jetdag never takes a subject from it. Each
workflow then reads its subject through a durable consumer `jd_on_<workflow>` that starts with the
messages stored from the moment it is created (`apply` creates it, so nothing published after `apply`
returns is missed, and nothing from before is taken as new).
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError

from jetdag.engine import subjects as S
from jetdag.engine.errors import ConfigError

log = logging.getLogger(__name__)

MAX_AGE = 7 * 86400.0
"""How long an unread trigger message waits in JD_TRIGGERS (as long as run events are kept)."""


async def capture(js: JetStreamContext, workflow: str, subject: str, replicas: int | None = None) -> str:
    """Make sure messages on `subject` are stored and `workflow` has its consumer of them; the stream's name.

    ConfigError when the subject overlaps a stream's subjects without being wholly held by it (a wildcard
    across two streams): then no one stream can feed the trigger."""
    stream = await _holder(js, subject)
    if stream is None or (stream == S.TRIGGERS and not await _holds(js, stream, subject)):
        stream = await _add_subject(js, subject, replicas)
    elif not await _holds(js, stream, subject):
        raise ConfigError(_overlap(subject, f"stream {stream} holds only part of it"))
    name = S.message_consumer(workflow)
    try:
        info = await js.consumer_info(stream, name)
        if info.config.filter_subject == subject:
            return stream
        await js.delete_consumer(stream, name)  # the trigger's subject changed: listen from now on the new one
    except NotFoundError:
        pass
    await _drop_elsewhere(js, name, stream)
    config = js_api.ConsumerConfig(
        durable_name=name,
        filter_subject=subject,
        deliver_policy=js_api.DeliverPolicy.NEW,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_deliver=-1,
        max_ack_pending=1_000,
    )
    try:
        await js.add_consumer(stream, config=config)
    except APIError as exc:  # a work-queue stream of yours refuses a second reader of the subject, say
        raise ConfigError(
            f"on_message {subject!r}: stream {stream}, which holds the subject, refuses jetdag's consumer "
            f"{name} ({exc.description or exc}); listen on a subject that stream does not hold"
        ) from None
    log.info("workflow %s listens on %s (stream %s)", workflow, subject, stream)
    return stream


async def release(js: JetStreamContext, workflow: str) -> None:
    """The workflow no longer listens: its consumer goes (the messages stay for other listeners and the max age)."""
    await _drop_elsewhere(js, S.message_consumer(workflow), None)


async def _holder(js: JetStreamContext, subject: str) -> str | None:
    try:
        return await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        return None


async def _holds(js: JetStreamContext, stream: str, subject: str) -> bool:
    """Whether one of the stream's subjects takes every subject `subject` can be."""
    info = await js.stream_info(stream)
    return any(covers(have, subject) for have in info.config.subjects or [])


def covers(pattern: str, subject: str) -> bool:
    """Whether every subject that `subject` (maybe with wildcards) matches is matched by `pattern`."""
    want, have = subject.split("."), pattern.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(want) > i
        if i >= len(want) or want[i] == ">" or (token != "*" and token != want[i]):
            return False
    return len(want) == len(have)


async def _add_subject(js: JetStreamContext, subject: str, replicas: int | None) -> str:
    try:
        info = await js.stream_info(S.TRIGGERS)
    except NotFoundError:
        if replicas is None:  # as many copies as the rest of jetdag's streams
            replicas = (await js.stream_info(S.EVENTS)).config.num_replicas
        config = js_api.StreamConfig(
            name=S.TRIGGERS,
            subjects=[subject],
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=MAX_AGE,
            storage=js_api.StorageType.FILE,
            num_replicas=replicas or 1,
            duplicate_window=120.0,
        )
        try:
            await js.add_stream(config)
            return S.TRIGGERS
        except APIError as exc:
            if "subjects overlap" in str(exc).lower():
                raise ConfigError(_overlap(subject, exc)) from None
            info = await js.stream_info(S.TRIGGERS)  # another engine created it meanwhile
    subjects = list(info.config.subjects or [])
    if subject not in subjects:
        try:
            await js.update_stream(info.config.evolve(subjects=[*subjects, subject]))
        except APIError as exc:
            raise ConfigError(_overlap(subject, exc)) from None
    return S.TRIGGERS


async def _drop_elsewhere(js: JetStreamContext, consumer: str, keep: str | None) -> None:
    """Delete the consumer `consumer` from every stream but `keep` (a subject that moved to another stream)."""
    for stream in await js.streams_info():
        name = stream.config.name
        if name == keep or name is None:
            continue
        try:
            await js.delete_consumer(name, consumer)
        except NotFoundError:
            continue


def _overlap(subject: str, exc: object) -> str:
    return (
        f"on_message {subject!r}: cannot be stored: it overlaps the subjects of another stream without being held "
        f"by one ({exc}); listen on a subject that one stream holds wholly, or on one no stream holds"
    )
