"""Run ids: 26 characters of Crockford base32, time-ordered (like ULIDs), valid as subject tokens."""

from __future__ import annotations

import os
import time
import zlib

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def new_run_id(now: float | None = None) -> str:
    """A fresh id: 48 bits of milliseconds then 80 random bits; ids sort by creation time."""
    ms = int((time.time() if now is None else now) * 1000)
    return _b32(ms, 10) + _b32(int.from_bytes(os.urandom(10), "big"), 16)


def derived_run_id(ms: int, *parts: object) -> str:
    """An id fixed by `parts` (a stream sequence, a message id), so a redelivery names the same run."""
    digest = zlib.crc32(":".join(map(str, parts)).encode())
    tail = (digest << 48) | (zlib.adler32(repr(parts).encode()) << 16) | (ms & 0xFFFF)
    return _b32(ms, 10) + _b32(tail, 16)


def run_time(run_id: str) -> float:
    """Creation time (epoch seconds) encoded in a run id."""
    ms = 0
    for ch in run_id[:10]:
        ms = ms * 32 + _ALPHABET.index(ch)
    return ms / 1000
