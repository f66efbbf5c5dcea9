"""How the live engines split the partitions between them: pure, so every engine computes the same."""

from __future__ import annotations

from collections.abc import Collection


def share(partitions: int, engines: Collection[str], me: str) -> int:
    """How many partitions `me` should hold: an even split over the live engines, the remainder going
    to the first ids in sorted order, so the shares of any one roster add up to `partitions` exactly."""
    live = sorted({*engines, me})
    base, extra = divmod(partitions, len(live))
    return base + (live.index(me) < extra)
