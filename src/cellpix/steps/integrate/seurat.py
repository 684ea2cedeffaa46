"""Seurat v4 anchor-based integration through rpy2 (the paper corrected with STACAS, a Seurat method).

The reference is passed to ``FindIntegrationAnchors(reference = 1)``, so
Seurat integrates each query batch onto it; ``IntegrateData`` returns
corrected expression for every panel gene, which is what images need.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

import numpy as np

from cellpix.errors import CellpixError, MissingDependencyError

R_HINT = ("R with Seurat is needed for --method seurat: apt-get install r-base-core r-cran-seurat (Debian/Ubuntu), "
          "or install.packages('Seurat') in R; then pip install rpy2")


def check_r() -> None:
    """Fail early, with the install command, when R or Seurat is missing."""
    if shutil.which("R") is None or shutil.which("Rscript") is None:
        raise MissingDependencyError(f"R is not installed. {R_HINT}")
    probe = subprocess.run(["Rscript", "-e", "suppressMessages(library(Seurat))"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise MissingDependencyError(f"the R package Seurat is not installed ({probe.stderr.strip()[-200:]}). "
                                     f"{R_HINT}")


R_CODE = r"""
function(matrices, names, genes, reference, dims, k_filter, k_weight, k_anchor) {
  suppressPackageStartupMessages(library(Seurat))
  objects <- lapply(seq_along(matrices), function(i) {
    m <- matrices[[i]]
    rownames(m) <- genes
    colnames(m) <- paste0(names[[i]], "_", seq_len(ncol(m)))
    sparse <- as(m, "dgCMatrix")
    obj <- CreateSeuratObject(counts = sparse, min.cells = 0, min.features = 0)
    obj <- SetAssayData(obj, slot = "data", new.data = sparse)
    VariableFeatures(obj) <- genes
    obj
  })
  anchors <- FindIntegrationAnchors(object.list = objects, reference = reference, anchor.features = genes,
                                    dims = 1:dims, k.filter = k_filter, k.anchor = k_anchor, verbose = FALSE)
  integrated <- IntegrateData(anchorset = anchors, features.to.integrate = genes, dims = 1:dims,
                              k.weight = k_weight, verbose = FALSE)
  out <- as.matrix(GetAssayData(integrated, assay = "integrated", slot = "data"))
  cells <- unlist(lapply(objects, colnames))
  out[genes, cells, drop = FALSE]
}
"""


@contextlib.contextmanager
def _library_path_kept() -> Iterator[None]:
    """Undo rpy2's edit of LD_LIBRARY_PATH once R has started.

    rpy2 prepends R's library folders (``/usr/lib/x86_64-linux-gnu`` among
    them) to ``os.environ['LD_LIBRARY_PATH']`` when it starts R. The running
    process is unaffected (the loader read the variable at start-up), but
    every later subprocess inherits it, and a Python whose libpython is found
    by RUNPATH (pyenv's) then loads the system's libpython instead and fails
    on its first C extension. Restoring the variable keeps subprocesses sane.
    """
    before = os.environ.get("LD_LIBRARY_PATH")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = before


def integrate_with_seurat(task) -> np.ndarray:
    """Run FindIntegrationAnchors + IntegrateData on each batch, the reference batch(es) first."""
    with _library_path_kept():  # importing rpy2.robjects starts the embedded R
        import rpy2.robjects as ro
        from rpy2.robjects import numpy2ri
        from rpy2.robjects.conversion import localconverter

    order = task.batch_names
    if task.reference_batches:
        order = [b for b in order if b in task.reference_batches] + [b for b in order
                                                                      if b not in task.reference_batches]
    sizes = [int((task.batches == b).sum()) for b in order]
    smallest = min(sizes)
    if smallest < 30:
        raise CellpixError(f"Seurat integration needs at least 30 cells per batch; the smallest has {smallest}")
    dims = int(min(30, smallest - 1))
    n_ref = max(1, sum(1 for b in order if b in task.reference_batches))
    with localconverter(ro.default_converter + numpy2ri.converter):
        function = ro.r(R_CODE)
        matrices = ro.ListVector({str(i): np.ascontiguousarray(task.expression[task.batches == b].T, dtype=np.float64)
                                  for i, b in enumerate(order)})
        result = function(matrices, ro.StrVector([f"b{i}" for i in range(len(order))]), ro.StrVector(task.genes),
                          ro.IntVector(list(range(1, n_ref + 1))), dims, min(200, smallest), min(100, smallest),
                          min(5, smallest - 1))
        integrated = np.asarray(result)
    if integrated.shape[0] != len(task.genes):
        raise CellpixError("Seurat returned an unexpected matrix; check the R session's messages")
    out = np.empty_like(task.expression)
    start = 0
    for batch, size in zip(order, sizes, strict=True):
        out[task.batches == batch] = integrated[:, start:start + size].T
        start += size
    return out
