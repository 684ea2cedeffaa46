"""cellpix: hierarchical cell-type annotation of single-cell RNA-seq through gene images.

The Python API does the work; the ``cellpix`` command line, the Galaxy wrappers and the Nextflow modules are thin
layers over it::

    import cellpix as cx

    reference = cx.integrate(raw_reference, genes_from=[query])
    layout = cx.fit_layout(reference, groupby="cell_type")
    model = cx.train(reference, layout, "pbmc-sorted", "cell_type")
    annotated = cx.annotate(query, model)

Everything below is imported on first use, so ``import cellpix`` stays cheap (the command line starts fast).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("cellpix")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# public name → the module that defines it
_PUBLIC = {
    "integrate": "cellpix.api", "fit_layout": "cellpix.api", "train": "cellpix.api", "annotate": "cellpix.api",
    "explain": "cellpix.api", "probabilities": "cellpix.api", "load_model": "cellpix.api", "hierarchy": "cellpix.api",
    "Hierarchy": "cellpix.core.hierarchy", "GeneLayout": "cellpix.core.layout", "TrainedModel": "cellpix.core.trained",
    "QCOptions": "cellpix.steps.integrate.options", "TrainConfig": "cellpix.steps.train.config",
    "AnnotateOptions": "cellpix.steps.annotate.options", "ExplainOptions": "cellpix.steps.explain.options",
    "CellpixError": "cellpix.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cellpix' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
