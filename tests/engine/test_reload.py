"""Reloading handler modules: changed code replaces the handler, a dropped handler is no longer served, and a
module that fails to import again keeps its handlers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetdag.engine.handlers import TaskContext, get_handler, handlers_of, handlers_version, unuse
from jetdag.engine.reload import Reloaded, reload_modules

V1 = """
from jetdag.engine.handlers import handler

@handler("t_reload_kept")
def kept(ctx):
    return "v1"

@handler("t_reload_dropped")
def dropped(ctx):
    return "dropped"
"""

V2 = """
from jetdag.engine.handlers import handler

@handler("t_reload_kept")
def kept(ctx):
    return "v2"

@handler("t_reload_new")
def new(ctx):
    return "new"
"""


@pytest.fixture
def module(tmp_path: Path) -> Iterator[Path]:
    source = tmp_path / "t_reload_mod.py"
    source.write_text(V1)
    sys.path.insert(0, str(tmp_path))
    yield source
    sys.path.remove(str(tmp_path))
    sys.modules.pop("t_reload_mod", None)
    for name in handlers_of("t_reload_mod"):
        unuse(name)


def run(name: str) -> object:
    fn = get_handler(name)
    assert fn is not None, name
    return fn(TaskContext(run_id="r", workflow="w", task="t", attempt=1, payload=None, params={}))


def test_a_reload_replaces_changed_handlers_adds_new_ones_and_drops_the_gone(module: Path) -> None:
    assert reload_modules(["t_reload_mod"]) == [Reloaded("t_reload_mod", added=("t_reload_dropped", "t_reload_kept"))]
    old = get_handler("t_reload_kept")
    version = handlers_version()
    module.write_text(V2)
    [outcome] = reload_modules(["t_reload_mod"])
    assert outcome == Reloaded("t_reload_mod", ("t_reload_new",), ("t_reload_kept",), ("t_reload_dropped",))
    assert str(outcome) == (
        "t_reload_mod: reloaded (added t_reload_new; changed t_reload_kept; removed t_reload_dropped)"
    )
    assert (run("t_reload_kept"), run("t_reload_new"), get_handler("t_reload_dropped")) == ("v2", "new", None)
    assert old is not None and old(None) == "v1"  # an attempt that holds the old function runs the old code
    assert handlers_version() != version


def test_a_module_that_fails_to_import_again_keeps_its_handlers(module: Path) -> None:
    reload_modules(["t_reload_mod"])
    kept = "t_reload_mod: not reloaded, its handlers are unchanged"
    # It fails after registering its new `kept`: the old one is registered again.
    module.write_text(V2 + "\nundefined_name\n")
    [outcome] = reload_modules(["t_reload_mod"])
    assert str(outcome) == f"{kept}: NameError: name 'undefined_name' is not defined"
    assert (run("t_reload_kept"), run("t_reload_dropped"), get_handler("t_reload_new")) == ("v1", "dropped", None)
    module.write_text(V2 + "\ndef (\n")
    assert str(reload_modules(["t_reload_mod"])[0]).startswith(f"{kept}: SyntaxError")
    assert run("t_reload_kept") == "v1"
