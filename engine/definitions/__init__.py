"""Workflow definition files (YAML, Python) read into the one model, with errors users can act on."""

from jetdag.engine.definitions.load import load_file, validate_files
from jetdag.engine.definitions.yamlfile import load_yaml

__all__ = ["load_file", "load_yaml", "validate_files"]
