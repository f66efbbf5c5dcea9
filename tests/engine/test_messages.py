"""The wire format: round trips, and a clear reason for every malformed message."""

from __future__ import annotations

import re

import msgpack
import pytest

from jetdag.engine.errors import MessageRejected
from jetdag.engine.events import RunSubmitted, TaskDue, TaskFailed, TaskStarted, TaskSucceeded
from jetdag.engine.messages import TaskMessage, decode_event, decode_task, encode_event, encode_task, msg_id

SUBJECT = "jd.evt.3.R1"
EVENTS = [
    RunSubmitted("R1", "etl", 4, {"day": "2026-11-23"}, 1.5),
    RunSubmitted("R1", "send", 0, {}, 1.5, spec={"name": "send", "tasks": []}, not_before=9.0),
    TaskStarted("R1", "a", 1, 2.0, "w1"),
    TaskSucceeded("R1", "a", 1, 3.0, "w1", {"rows": 10, "files": ["x"]}),
    TaskFailed("R1", "a", 2, 4.0, "exit code 1", "w1", retryable=False, details={"exit_code": 1}),
    TaskDue("R1", "a", 3, 4.0, 7.5),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind)
def test_events_round_trip(event: object) -> None:
    assert decode_event(SUBJECT, encode_event(event)) == event  # type: ignore[arg-type]


def test_json_events_are_accepted_for_hand_written_messages() -> None:
    data = b'{"v": 1, "k": "task.succeeded", "run": "R1", "task": "a", "attempt": 1, "ts": 2}'
    assert decode_event(SUBJECT, data) == TaskSucceeded("R1", "a", 1, 2)


def test_a_task_message_round_trips_and_uses_short_names_on_the_wire() -> None:
    msg = TaskMessage("R1", "etl", "a", 1, "command", {"argv": ["true"]}, {"p": 1}, SUBJECT, 30.0, "io", 7)
    data = encode_task(msg)
    assert msgpack.unpackb(data)["run"] == "R1"
    assert decode_task("jd.task.io.7.command", data) == msg


BAD = [
    (b"", "empty message"),
    (b"\xc1garbage", "not valid msgpack or JSON"),
    (msgpack.packb([1, 2]), "expected a map, got list"),
    (msgpack.packb({"v": 2, "k": "task.started"}), "unsupported version v=2"),
    (msgpack.packb({"v": 1, "k": "task.exploded"}), "unknown event kind 'task.exploded'"),
    (msgpack.packb({"v": 1, "k": "task.started", "run": "R1", "task": "a"}), "missing 2 required positional"),
    (msgpack.packb({"v": 1, "k": "task.started", "run": "R1", "task": "a", "attempt": "1", "ts": 1}), "'attempt'"),
    (msgpack.packb({"v": 1, "k": "task.started", "run": "R2", "task": "a", "attempt": 1, "ts": 1}), "does not match"),
    (msgpack.packb({"v": 1, "k": "task.started", "run": "R1", "task": "a", "attempt": 0, "ts": 1}), "attempt must be"),
]


@pytest.mark.parametrize(("data", "reason"), BAD, ids=[r for _, r in BAD])
def test_malformed_events_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MessageRejected) as err:
        decode_event(SUBJECT, data)
    assert reason in err.value.reason and err.value.subject == SUBJECT


def test_a_task_message_with_a_foreign_reply_subject_is_rejected() -> None:
    msg = TaskMessage("R1", "etl", "a", 1, "noop", None, {}, "somewhere.else")
    with pytest.raises(MessageRejected, match="reply subject"):
        decode_task("jd.task.default.5.noop", encode_task(msg))


def test_dedupe_ids_name_what_a_message_means() -> None:
    assert msg_id("R1", "a", 2, "result") == "R1:a:2:result"


def test_a_task_message_on_the_subject_of_another_handler_is_rejected() -> None:
    msg = TaskMessage("R1", "etl", "a", 1, "etl.load", None, {}, SUBJECT)
    assert decode_task("jd.task.default.5.etl:load", encode_task(msg)) == msg  # a dot is ':' in the token
    with pytest.raises(MessageRejected, match=re.escape("handler 'etl.load' on the subject of handler 'noop'")):
        decode_task("jd.task.default.5.noop", encode_task(msg))
