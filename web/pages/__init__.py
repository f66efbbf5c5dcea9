"""Dashboard pages: server-rendered (web/templates/), htmx for interaction, SSE for live updates."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from .alerts import alerts_page, files_page
from .dead_letters import dead_letters_page, requeue_page
from .overview import overview, overview_live
from .runs import run_live, run_page, runs_live, runs_page
from .sql import sql_csv, sql_page, sql_run
from .tasks import tasks_page
from .workers import workers_page
from .workflows import workflow_live, workflow_page, workflow_schedule, workflows_live, workflows_page

PAGES: list[ControllerRouterHandler] = [overview]
PAGES += [overview_live, runs_page, runs_live, run_page, run_live]
PAGES += [workflows_page, workflows_live, workflow_page, workflow_live, workflow_schedule]
# Data pages (issue 6): task history, workers, dead letters, SQL, alerts, files.
PAGES += [tasks_page, workers_page, dead_letters_page, requeue_page, sql_page, sql_run, sql_csv]
PAGES += [alerts_page, files_page]
