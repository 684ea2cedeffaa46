"""Built-in hierarchies, shipped as YAML next to this module."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from cellpix.core.hierarchy import Hierarchy
from cellpix.hookspecs import hookimpl

HIERARCHY_DIR = Path(__file__).with_name("hierarchies")


@hookimpl
def cellpix_hierarchies():
    return {path.stem: partial(Hierarchy.from_yaml, path) for path in sorted(HIERARCHY_DIR.glob("*.yaml"))}
