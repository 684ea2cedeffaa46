"""cellpix plugin: tumour-microenvironment cell-type hierarchies (immune and non-immune types), and a model.

Registered through the ``cellpix`` entry point like any community plugin;
each hierarchy is a YAML file beside this module, read only when asked for.
The trained models are in ``bundles/``, listed with their sha256 and model card in ``bundles/models.json``
(written by ``cellpix models package``; the head-and-neck model is built by ``python -m models.build`` in
cellpix's source tree).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from cellpix.plugins import Hierarchy, hookimpl, read_manifest

__version__ = "0.1.0"
HIERARCHY_DIR = Path(__file__).with_name("hierarchies")
MODEL_DIR = Path(__file__).with_name("bundles")


@hookimpl
def cellpix_hierarchies():
    return {path.stem: partial(Hierarchy.from_yaml, path) for path in sorted(HIERARCHY_DIR.glob("*.yaml"))}


@hookimpl
def cellpix_models():
    return read_manifest(MODEL_DIR)
