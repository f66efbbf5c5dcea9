"""Malformed messages: logged with the reason, counted, dead-lettered, and never retried."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jetdag.engine import subjects as S
from jetdag.engine.errors import MessageRejected

log = logging.getLogger(__name__)


async def reject(js: JetStreamContext, msg: Msg, err: MessageRejected) -> None:
    """Copy `msg` to `jd.dlq._invalid` with the reason in headers, then terminate its delivery."""
    log.warning("%s", err)
    headers = {"Jd-Reason": err.reason[:1000], "Jd-Subject": msg.subject}
    try:
        await js.publish(S.dlq_subject(S.INVALID_DLQ), msg.data, headers=headers)
    except Exception as exc:  # the reason is logged above; losing the copy must not stop the consumer
        log.error("could not dead-letter a message from %s: %s", msg.subject, exc)
    if msg.reply:
        await msg.term()
