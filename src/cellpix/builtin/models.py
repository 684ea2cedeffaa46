"""Built-in ready-made models: the bundles in ``bundles/`` beside this module, listed in its ``models.json``.

``python -m models.build`` (in the source tree) trains them from the shared data and writes the manifest.
"""

from __future__ import annotations

from pathlib import Path

from cellpix.core.models import read_manifest
from cellpix.hookspecs import hookimpl

MODEL_DIR = Path(__file__).with_name("bundles")


@hookimpl
def cellpix_models():
    return read_manifest(MODEL_DIR)
