"""cellpix plugin: tumour-microenvironment cell-type hierarchies (immune and non-immune types).

Registered through the ``cellpix`` entry point like any community plugin;
each hierarchy is a YAML file beside this module, read only when asked for.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from cellpix.plugins import Hierarchy, hookimpl

__version__ = "0.1.0"
HIERARCHY_DIR = Path(__file__).with_name("hierarchies")


@hookimpl
def cellpix_hierarchies():
    return {path.stem: partial(Hierarchy.from_yaml, path) for path in sorted(HIERARCHY_DIR.glob("*.yaml"))}
