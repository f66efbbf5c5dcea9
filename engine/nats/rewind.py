"""Rewinding a partition's durable consumer to its ack floor, so a new owner gets the old one's events at once.

The events a dead owner had received but not acked come back by themselves only after the
consumer's AckWait. nats-server 2.14+ can rewind a consumer instead (ADR-60): a request to
`$JS.API.CONSUMER.RESET.<stream>.<consumer>` with an empty body (nats-py: `js.reset_consumer`).
What it does, as measured on nats-server 2.15.1 (tests/actors/test_rewind.py holds it to that):

- The consumer goes back to one above its ack floor (the reply's `reset_seq`), and every message
  of its filter above the floor is delivered again at once, in stream order: those still waiting
  for an ack, and also those acked out of order above the floor. These were handled already, so
  they are duplicates; `decide` ignores an event it applied.
- A message nak'd with a delay (a deferred event: a retry timer, an event ahead of its cause)
  comes back at once as well, its delay forgotten; the run actor defers it again.
- Pending and redelivered counts are cleared, the delivery sequence starts again at 1, and so
  does each message's `num_delivered` (an early event gets its MAX_EARLY_DELIVERIES afresh).
- An ack sent late by the previous owner (a zombie) still acks the new delivery: acks name the
  stream sequence. That is harmless: an owner acks only after its snapshot write went through.
- Pull requests waiting at the server stay and are served.

So a rewind costs one more pass through the run actors for everything between the ack floor and
the last delivered message that was not in flight. It is done only when that is cheap; else AckWait
brings the events back as before.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js import api as js_api

log = logging.getLogger(__name__)

REWIND_MAX_SPAN = 10_000
"""Rewind only when the delivered-but-past-the-ack-floor span is at most this many stream sequences.

Every message of the partition in that span is sent again: the ones in flight (wanted), the ones
acked already (duplicates) and the deferred ones (back early, to be deferred again); the consumer
info cannot tell them apart. The span in stream sequences bounds their number from above: the
stream also holds the other partitions' events and every step record, so with 16 partitions
evenly loaded a span of 10,000 means about 300 messages of ours. An engine replays events it
handled already at ≈ 0.1 ms each (6,000 events of 3,000 finished runs in 0.6 s on 2 cores), so even
if the whole span were ours the replay would hold the partition up for about a second, well under
AckWait. A partition whose floor is held back far (a long retry timer while the runs beside it
went on) skips the rewind: AckWait is cheaper than replaying everything it did since.
"""


def rewind_span(info: js_api.ConsumerInfo) -> int:
    """Stream sequences between the consumer's ack floor and its last delivery: at most what a rewind resends."""
    delivered = info.delivered.stream_seq if info.delivered and info.delivered.stream_seq else 0
    floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
    return max(0, delivered - floor)


async def rewind_unacked(
    js: JetStreamContext,
    stream: str,
    info: js_api.ConsumerInfo,
    *,
    max_span: int = REWIND_MAX_SPAN,
    timeout: float = 2.0,
) -> bool:
    """Have the messages delivered to the consumer's previous reader and not acked sent again now, when cheap.

    `info` is the consumer's state before anyone pulls from it (its owner holds the partition's
    lease, so no one else should). Unacked messages mean an earlier owner (another engine, this one
    before a restart) took them and stopped. True when the consumer was rewound; a failure is logged
    and leaves the consumer as it was, for AckWait to redeliver.
    """
    consumer = info.name
    unacked = info.num_ack_pending or 0
    if unacked == 0:
        return False  # nothing held by anyone: a fresh partition, or a clean hand-over
    span = rewind_span(info)
    if span > max_span:
        log.info(
            "consumer %s: %d unacked of a previous owner, not rewinding (%d stream seqs past the ack floor > %d): "
            "they come back after AckWait",
            consumer,
            unacked,
            span,
            max_span,
        )
        return False
    try:
        reset = await js.reset_consumer(stream, consumer, timeout=timeout)
    except Exception as exc:  # an older server (< 2.14), a timeout: AckWait still redelivers
        log.warning("consumer %s: rewind failed (%r): the unacked come back after AckWait", consumer, exc)
        return False
    log.info(
        "consumer %s: %d unacked of a previous owner, rewound to stream seq %d (%d stream seqs past the ack floor)",
        consumer,
        unacked,
        reset.reset_seq,
        span,
    )
    return True
