"""create_app(): the Litestar app. It reaches the running system only through NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.openapi import OpenAPIConfig

from jetdag.engine.client import Client
from jetdag.engine.errors import AuditError, AuditUnavailable, BackfillTooLarge, ControlError, NotFound
from jetdag.engine.firing import BackfillError
from jetdag.engine.subjects import DEFAULT_PARTITIONS

from .api.alerts import list_alerts
from .api.audit import run_sql, run_summary, saved_queries, task_audit
from .api.backfill import backfill_refused, start_backfill
from .api.control import CONTROL, control_error
from .api.dead_letters import list_dead_letters, requeue_dead_letter
from .api.health import health
from .api.metrics import metrics
from .api.runs import get_run, list_runs, start_run
from .api.schedules import get_schedule, list_schedules, toggle_schedule
from .api.stream import stream
from .api.tasks import list_tasks
from .api.workers import list_workers
from .api.workflows import apply_workflow, get_workflow, list_workflows
from .csrf import CrossOriginProtection
from .live import Hub
from .pages import PAGES
from .pages.workflows import workflow_backfill
from .templating import static_files, template_config


def _not_found(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    return Response({"detail": str(exc)}, status_code=404)


def _audit_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # A refused or failing statement is the caller's to fix (400); no auditor at all is 503.
    if isinstance(exc, AuditUnavailable):
        return Response({"detail": str(exc)}, status_code=503)
    refused = isinstance(exc, AuditError) and exc.refused
    return Response({"detail": str(exc), "refused": refused}, status_code=400)


def create_app(nats_url: str, *, partitions: int = DEFAULT_PARTITIONS) -> Litestar:
    """The HTTP API and dashboard, connected to the NATS at `nats_url` for its lifetime."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.client = await Client.connect(nats_url, name="jetdag web")
        app.state.partitions = partitions
        app.state.hub = Hub(app.state.client)  # one step-record subscription per process, shared by every SSE client
        await app.state.hub.start()
        try:
            yield
        finally:
            await app.state.hub.stop()
            await app.state.client.close()

    return Litestar(
        route_handlers=[
            health,
            list_runs,
            get_run,
            start_run,
            run_sql,
            saved_queries,
            run_summary,
            task_audit,
            list_workers,
            list_workflows,
            get_workflow,
            apply_workflow,
            start_backfill,
            list_schedules,
            get_schedule,
            toggle_schedule,
            *CONTROL,
            list_tasks,
            list_dead_letters,
            requeue_dead_letter,
            list_alerts,
            metrics,
            stream,
            *PAGES,
            workflow_backfill,  # the workflow page's backfill form (its fragment); beside PAGES for now
            static_files(),
        ],
        template_config=template_config(),
        lifespan=[lifespan],
        middleware=[CrossOriginProtection()],  # no login yet: other sites' pages must not post here
        exception_handlers={
            ControlError: control_error,
            NotFound: _not_found,
            AuditError: _audit_error,
            AuditUnavailable: _audit_error,
            BackfillError: backfill_refused,
            BackfillTooLarge: backfill_refused,
        },
        openapi_config=OpenAPIConfig(title="jetdag", version="1", path="/schema"),
    )
