"""POST /api/v1/workflows/{name}/backfill: the runs a workflow's clock would have started over a past range.

The dry run lists them (logical time, run id, whether it exists); without it the runs that do not exist yet
are started. Every tick's run has the id the scheduler gives that tick, so a backfill issued twice, or over
ticks the scheduler already fired, starts nothing twice. 404 for an unknown workflow; 400 with the reason for
a bad time, an unknown `by`, a range that ends before it starts or holds more than 10,000 runs.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK
from msgspec import Meta

from jetdag.engine import subjects as S
from jetdag.engine.client import Client

TIME = "ISO 8601 (2026-11-01, 2026-11-01T13:00, with Z or an offset; without a zone it is UTC) or epoch seconds"


class BackfillRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A backfill's range and what its runs get. A misspelt field is refused rather than ignored: a
    backfill that silently dropped `meta` would start thousands of runs without it."""

    start: Annotated[str, Meta(description=f"The first tick: {TIME}.", examples=["2026-11-01T00:00Z"])] = msgspec.field(
        name="from"
    )
    end: Annotated[str, Meta(description=f"The last tick, included: {TIME}.", examples=["2026-11-02T23:59Z"])] = (
        msgspec.field(name="to")
    )
    by: Annotated[
        Literal["hour", "day", "month"] | None,
        Meta(description="Step from `from` by this instead of by the cron (a workflow without a cron needs it)."),
    ] = None
    trigger: Annotated[
        str | None, Meta(description="Only this clock trigger: its key (cron, cron:PHASE) or the phase it starts at.")
    ] = None
    params: Annotated[dict[str, Any] | None, Meta(description="Params of every run.")] = None
    meta: Annotated[dict[str, Any] | None, Meta(description="{meta:key} values of every run.")] = None
    dry_run: Annotated[bool, Meta(description="List the runs and start none.")] = False


def backfill_refused(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """BackfillError (it cannot be planned) and BackfillTooLarge: the caller's to fix, with the reason."""
    return Response({"detail": str(exc)}, status_code=400)


def moment(field: str, value: str) -> float:
    """Epoch seconds from ISO 8601 (a time without a zone is UTC, as a browser's datetime-local input
    sends it) or epoch seconds; ValidationException naming the field otherwise."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
    else:
        if math.isfinite(seconds):
            return seconds
    why = "expected ISO 8601 (like 2026-11-01T13:00Z; UTC without a zone) or epoch seconds"
    raise ValidationException(
        f"{field!r} must be a time: {why}, got {value!r}",
        extra=[{"key": field, "message": why, "source": "body"}],
    )


async def run_backfill(client: Client, name: str, request: BackfillRequest) -> dict[str, Any]:
    """`{"workflow", "runs", "new", "existing", "started", "dry_run"}`: what the API answers and the
    workflow page shows. `runs` are the client's, oldest first; `started` is 0 for a dry run."""
    start, end = moment("from", request.start), moment("to", request.end)
    runs = await client.backfill(
        name, start, end, by=request.by, trigger=request.trigger or None, params=request.params,
        meta=request.meta, dry_run=request.dry_run,
    )  # fmt: skip
    new = sum(1 for r in runs if not r["exists"])
    return {
        "workflow": S.workflow_key(name),
        "runs": runs,
        "new": new,
        "existing": len(runs) - new,
        "started": 0 if request.dry_run else new,
        "dry_run": request.dry_run,
    }


@post("/api/v1/workflows/{name:str}/backfill", status_code=HTTP_200_OK)
async def start_backfill(state: State, name: FromPath[str], data: JSONBody[BackfillRequest]) -> dict[str, Any]:
    """Start the runs of the workflow's ticks from `from` to `to` (both included), oldest first, that do not
    exist yet; `dry_run` only lists them. Each run: `{"run_id", "logical_time" (epoch s), "trigger",
    "exists", "meta"}`. Re-issued, it starts nothing twice. 400: a bad time or `by`, `to` before `from`,
    no cron and no `by`, more than 10,000 runs; 404: no such workflow."""
    client: Client = state.client
    return await run_backfill(client, name, data)
