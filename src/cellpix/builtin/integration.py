"""Built-in integration methods: none, combat, scanorama, harmony and seurat (R)."""

from __future__ import annotations

from cellpix.hookspecs import hookimpl
from cellpix.steps.integrate.methods import BUILTIN_METHODS


@hookimpl
def cellpix_integration_methods():
    return dict(BUILTIN_METHODS)
