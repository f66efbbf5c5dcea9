"""Workflow definition files (YAML, TOML, Python) read into the one model, with errors users can act on."""

from jetdag.engine.definitions.load import Validated, load_file, validate_files
from jetdag.engine.definitions.yamlfile import load_yaml

__all__ = ["Validated", "load_file", "load_yaml", "validate_files"]
