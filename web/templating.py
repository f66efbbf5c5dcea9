"""The dashboard's templates (Jinja, under web/templates/) and static files (web/static/, htmx vendored)."""

from __future__ import annotations

from pathlib import Path

from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

HERE = Path(__file__).parent


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine)


def static_files() -> ControllerRouterHandler:
    return create_static_files_router(path="/static", directories=[HERE / "static"], include_in_schema=False)
