"""GET/POST /api/v1/workflows: apply YAML over HTTP with every error at line:column, list, read one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.web.app import create_app

Http = AsyncTestClient[Any]

GOOD = """\
name: t_http_apply
tasks:
  - name: a
    handler: noop
  - name: b
    handler: noop
    depends_on: [a]
"""


@pytest.fixture
async def http(nats_url: str, system: System) -> AsyncIterator[Http]:
    async with AsyncTestClient(app=create_app(nats_url)) as test_client:
        yield test_client


async def test_a_yaml_body_is_applied_then_listed_and_read_back(http: Http) -> None:
    first = await http.post("/api/v1/workflows", content=GOOD, headers={"content-type": "application/yaml"})
    assert first.status_code == 201, first.text
    assert first.json() == {"name": "t_http_apply", "version": 1, "applied": "created"}
    again = await http.post("/api/v1/workflows", content=GOOD)
    assert again.json()["applied"] == "unchanged"

    listed = (await http.get("/api/v1/workflows")).json()
    assert {"name": "t_http_apply", "version": 1, "tasks": ["a", "b"]}.items() <= next(
        w for w in listed if w["name"] == "t_http_apply"
    ).items()
    one = (await http.get("/api/v1/workflows/t_http_apply")).json()
    assert one["yaml"].startswith("name: t_http_apply") and one["definition"]["name"] == "t_http_apply"


async def test_every_error_of_a_bad_definition_comes_back_as_400_with_its_place(http: Http) -> None:
    bad = GOOD.replace("handler: noop\n    depends_on: [a]", "handler: noop\n    depends_on: [x]\n    retires: 3")
    answer = await http.post("/api/v1/workflows", content=bad)
    assert answer.status_code == 400
    errors = answer.json()["extra"]
    assert all(e.startswith("request:") for e in errors), errors
    assert any("'x'" in e for e in errors), errors
    assert any("retires" in e and "did you mean" in e for e in errors), errors
    assert len(errors) >= 2


async def test_an_unknown_workflow_is_404(http: Http) -> None:
    assert (await http.get("/api/v1/workflows/nope")).status_code == 404
