"""How the stores pack KV values: msgpack, deflate-compressed above `COMPRESS_ABOVE` bytes.

A compressed value is `MARKER` + a raw deflate stream (RFC 1951: no zlib header or trailer) of the
msgpack bytes; `zlib.decompress(value[1:], -15)` reads it. `MARKER` is 0xc1, the one byte msgpack never
uses, so no plain value starts with it: values written before compression existed, and small ones, read
as they always did. Used by `jd_defs` (defs.py) and `jd_runs` (runs.py).

The stream may be built of pieces (`deflate`), each compressed on its own and ended on a byte boundary,
so pieces cached from an earlier value can be put together again without recompressing them (as pigz
does): RunState.stored() keeps one per chunk of tasks and recompresses only the chunks a step changed.
Definitions are compressed in one piece (`compress`).
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import msgpack

from jetdag.engine.errors import JetdagError

COMPRESS_ABOVE: Final = 64 * 1024
"""Packed values longer than this are stored compressed (`jetdag bench scale --huge`: its 100k-task wide
definition, 15.4 MB -> 0.53 MB; the run snapshot, about 11 MB -> 1.2 MB)."""
MARKER: Final = b"\xc1"
LEVEL: Final = 1
"""zlib's fastest level: run snapshots are rewritten on every step."""


class ValueTooLarge(JetdagError):
    """A value does not fit in one NATS message (max_payload), even compressed."""

    def __init__(self, what: str, packed: int, stored: int, limit: int | None) -> None:
        self.what, self.packed, self.stored, self.limit = what, packed, stored, limit
        size = f"{packed:,} bytes packed" + (f", {stored:,} compressed" if stored != packed else "")
        over = f"over NATS max_payload ({limit:,} bytes)" if limit else "over NATS max_payload"
        super().__init__(f"{what} does not fit in one NATS message: {size}, {over}")


def deflate(data: bytes, final: bool = False) -> bytes:
    """One piece of a compressed value: `data` raw-deflated by a compressor of its own (so it refers to
    nothing before it) and flushed to a byte boundary. Pieces concatenate into one stream; its last piece
    is `final` (it ends the stream)."""
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


def compress(data: bytes) -> bytes:
    """`data` as stored: itself up to `COMPRESS_ABOVE` bytes, `MARKER` + deflate (in one piece) above."""
    if len(data) <= COMPRESS_ABOVE:
        return data
    return MARKER + deflate(data, final=True)


def decompress(value: bytes) -> bytes:
    """The msgpack bytes of a stored value, compressed or not."""
    return zlib.decompress(memoryview(value)[1:], -15) if value[:1] == MARKER else value


def encode(obj: Any) -> bytes:
    return compress(msgpack.packb(obj, use_bin_type=True))


def decode(value: bytes) -> Any:
    return msgpack.unpackb(decompress(value), raw=False)


def too_large(what: str, value: bytes, kv: Any) -> ValueTooLarge:
    """The error for a stored `value` NATS refused (MaxPayloadError) on a put into `kv`: what, sizes, limit."""
    try:  # nats-py keeps the server's max_payload on the connection, behind the KV's JetStream context
        limit: int | None = kv._js._nc.max_payload
    except AttributeError:
        limit = None
    return ValueTooLarge(what, len(decompress(value)), len(value), limit)
