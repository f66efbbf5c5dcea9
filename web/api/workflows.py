"""Workflows: list, one definition, and applying a YAML definition over HTTP."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath

from jetdag.engine.client import Client
from jetdag.engine.definitions.export import to_yaml
from jetdag.engine.definitions.yamlfile import load_yaml
from jetdag.engine.errors import DefinitionErrors, NotFound
from jetdag.engine.model import WorkflowSpec

MAX_DEFINITION = 1 << 20  # bytes: a definition is text a person wrote, not a payload


def _summary(spec: WorkflowSpec, version: int) -> dict[str, Any]:
    return {"name": spec.name, "title": spec.title or spec.name, "description": spec.description,
            "version": version, "tasks": [t.name for t in spec.tasks], "schedule": spec.schedule}  # fmt: skip


@get("/api/v1/workflows")
async def list_workflows(state: State) -> list[dict[str, Any]]:
    """Every applied workflow at its latest version."""
    client: Client = state.client
    out = []
    for name in await client.defs.names():
        try:
            out.append(_summary(*await client.defs.get(name)))
        except NotFound:
            continue  # deleted between the listing and the read
    return out


@get("/api/v1/workflows/{name:str}")
async def get_workflow(state: State, name: FromPath[str]) -> dict[str, Any]:
    """The latest version: its summary, the stored definition, and YAML when YAML can say it all."""
    client: Client = state.client
    try:
        spec, version = await client.defs.get(name)
    except NotFound:
        raise NotFoundException(f"no workflow {name!r}") from None
    try:
        yaml: str | None = to_yaml(spec)
    except ValueError:
        yaml = None  # a Python-defined workflow with callables, say
    return {**_summary(spec, version), "definition": spec.to_dict(), "yaml": yaml}


@post("/api/v1/workflows")
async def apply_workflow(state: State, request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Apply the YAML definition in the body (as `jetdag apply` does); 400 lists every error at line:column."""
    body = await request.body()
    if len(body) > MAX_DEFINITION:
        raise ClientException(f"definition too large: {len(body)} bytes, at most {MAX_DEFINITION}")
    try:
        spec = load_yaml("request", body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ClientException(f"the body is not UTF-8 text: {exc}") from None
    except DefinitionErrors as exc:
        raise ClientException("invalid definition", extra=[str(e) for e in exc.errors]) from None
    client: Client = state.client
    applied, version = await client.apply(spec)
    return {"name": spec.name, "version": version, "applied": applied.value}
