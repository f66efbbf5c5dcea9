"""Definition files of any supported kind, read into WorkflowSpecs."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from jetdag.engine.definitions import checks
from jetdag.engine.definitions.checks import At, Located
from jetdag.engine.definitions.tomlfile import read_toml
from jetdag.engine.definitions.yamlfile import read_yaml
from jetdag.engine.errors import DefinitionError, DefinitionErrors, DefinitionWarning
from jetdag.engine.model import WorkflowSpec


class Validated(NamedTuple):
    """What validate_files found: the valid workflows, every error, and the warnings of the valid workflows."""

    specs: list[WorkflowSpec]
    errors: list[DefinitionError]
    warnings: list[DefinitionWarning]


def load_file(path: str | Path) -> list[WorkflowSpec]:
    """The workflows defined in one .yaml, .yml, .toml (flowlord) or .py file; DefinitionErrors lists every fault."""
    return [found.spec for found in _load_located(path)]


def validate_files(paths: Iterable[str | Path]) -> Validated:
    """Every valid workflow in `paths`, every error (including a name defined twice), and every warning.

    Never raises for a faulty definition; a workflow whose name is already taken is left out, with its warnings.
    """
    specs: list[WorkflowSpec] = []
    errors: list[DefinitionError] = []
    warnings: list[DefinitionWarning] = []
    first: dict[str, At] = {}
    done: set[Path] = set()
    for path in paths:
        if Path(path).resolve() in done:
            continue  # a file named twice (say by two globs) defines its workflows once
        done.add(Path(path).resolve())
        try:
            located = _load_located(path)
        except DefinitionErrors as exc:
            errors.extend(exc.errors)
            continue
        for spec, at, found in located:
            if spec.name in first:
                errors.append(_defined_twice(spec.name, at, first[spec.name]))
            else:
                first[spec.name] = at
                specs.append(spec)
                warnings.extend(found)
    return Validated(specs, errors, warnings)


def _defined_twice(name: str, at: At, first: At) -> DefinitionError:
    place = f"line {first.line}" if first.path == at.path else f"{first.path}:{first.line}"
    return checks.error(at, f"workflow {name!r} is already defined at {place}: workflow names must be unique")


def _load_located(path: str | Path) -> list[Located]:
    shown, suffix = str(path), Path(path).suffix
    if suffix.lower() in (".yaml", ".yml"):
        return [read_yaml(path)]
    if suffix.lower() == ".toml":
        return [read_toml(path)]
    if suffix.lower() == ".py":
        return _load_python(Path(path), shown)
    message = f"unsupported file type '{suffix}': use .yaml, .yml, .toml or .py"
    raise DefinitionErrors([DefinitionError(shown, 1, 1, message)])


def _load_python(path: Path, shown: str) -> list[Located]:
    """Import the file and collect the Workflows and WorkflowSpecs bound at its top level."""
    # Imported here: jetdag.engine.workflow imports this package's checks, so importing it at
    # the top would make `import jetdag.engine.workflow` circular.
    from jetdag.engine.workflow import Workflow

    checks.read_text(path, shown)  # a missing file is "cannot read", not an import error
    module = _import(path, shown)
    found: list[Located] = []
    errors: list[DefinitionError] = []
    seen: set[int] = set()
    for value in vars(module).values():
        if id(value) in seen or not isinstance(value, Workflow | WorkflowSpec):
            continue
        seen.add(id(value))
        if isinstance(value, WorkflowSpec):
            found.append(Located(value, At(shown, 1, 1)))
            continue
        try:
            spec, warnings = value.check()
        except DefinitionErrors as exc:
            errors.extend(_as_given(e, path, shown) for e in exc.errors)
            continue
        found.append(Located(spec, value.origin, tuple(_warning_as_given(w, path, shown) for w in warnings)))
    if not found and not errors:
        example = 'wf = Workflow(name="etl")'
        errors.append(DefinitionError(shown, 1, 1, f"no Workflow defined: assign one at module level, like {example}"))
    first: dict[str, At] = {}
    for spec, at, _ in found:
        if spec.name in first:
            errors.append(_defined_twice(spec.name, at, first[spec.name]))
        first.setdefault(spec.name, at)
    checks.raise_sorted(errors)
    return found


def _as_given(err: DefinitionError, path: Path, shown: str) -> DefinitionError:
    """`err` naming the file as the user wrote it: the builder only knows the interpreter's path."""
    if err.path != shown and Path(err.path).resolve() == path.resolve():
        return DefinitionError(shown, err.line, err.column, err.message)
    return err


def _warning_as_given(warning: DefinitionWarning, path: Path, shown: str) -> DefinitionWarning:
    if warning.path != shown and Path(warning.path).resolve() == path.resolve():
        return replace(warning, path=shown)
    return warning


def _import(path: Path, shown: str) -> ModuleType:
    # One module name per file: imported again (`up --workflows` following its change), its @handler functions
    # are the same `def`s seen again and replace the old ones, instead of clashing with them.
    name = f"jetdag_definition_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(name, shown)
    if spec is None or spec.loader is None:
        raise DefinitionErrors([DefinitionError(shown, 1, 1, "cannot import: not a Python source file")])
    module = importlib.util.module_from_spec(spec)
    # Its folder on the path, as `python file.py` would have it: it may import its neighbours.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # Registered while it runs, as a normal import would be: dataclasses and pickling look it up.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except DefinitionErrors:
        raise
    except DefinitionError as exc:
        raise DefinitionErrors([exc]) from exc
    except (Exception, SystemExit) as exc:
        raise DefinitionErrors([_import_error(path, shown, exc)]) from exc
    finally:
        sys.modules.pop(name, None)
    return module


def _import_error(path: Path, shown: str, exc: BaseException) -> DefinitionError:
    """Where in the file the import failed (the deepest frame inside it), and why."""
    line, column, detail = 1, 1, str(exc)
    target = path.resolve()
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename).resolve() == target:
        line, column, detail = exc.lineno or 1, exc.offset or 1, exc.msg
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == target]
        if frames and frames[-1].lineno:
            line = frames[-1].lineno
    reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return DefinitionError(shown, line, column, f"cannot import: {reason}")
