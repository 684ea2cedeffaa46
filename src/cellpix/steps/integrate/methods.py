"""Batch-correction methods, as the integration hook registers them.

Every method works on log1p(CP10k) expression of one gene panel and returns
*expression* of the same shape, because images are drawn from expression,
not from an embedding. A method sees all cells stacked (reference cells
first, then the query's), their batch labels, and which batches are the
reference; :func:`correct` then maps the result back onto the reference's
own scale, gene by gene, so that a model trained on the uncorrected
reference reads the corrected query as it reads its training cells.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cellpix.errors import CellpixError, MissingDependencyError


@dataclass
class IntegrationTask:
    """What a method corrects: dense log expression of all cells, their batches and the reference batches."""

    expression: np.ndarray  # cells × genes, float32, log1p(CP10k)
    batches: np.ndarray  # one label per cell (str)
    reference_batches: tuple[str, ...]  # batches that define the target scale; empty means pooled
    genes: list[str]
    n_pcs: int = 30
    random_state: int = 0

    @property
    def reference_mask(self) -> np.ndarray:
        return np.isin(self.batches, list(self.reference_batches))

    @property
    def batch_names(self) -> list[str]:
        return list(dict.fromkeys(self.batches.tolist()))


@dataclass(frozen=True)
class IntegrationMethod:
    """A named batch-correction method and what it needs to run."""

    name: str
    description: str
    run: Callable[[IntegrationTask], np.ndarray]
    python_modules: tuple[str, ...] = ()
    install_hint: str = ""
    needs_r: bool = False
    # Map the output back onto the reference's per-gene scale (anchor_to_reference). Right for methods whose
    # change is near-affine per gene (ComBat, Harmony, Seurat); wrong for Scanorama, whose per-cell smoothed
    # shifts make the per-gene least-squares map shrink the correction until ctrl/stim separate again (Kang:
    # kNN mixing 0.82 unanchored, 0.16 anchored).
    anchored: bool = True

    def check_available(self) -> None:
        """Fail with an install hint before any work when a dependency is missing."""
        missing = [m for m in self.python_modules if not _installed(m)]
        if missing:
            raise MissingDependencyError(
                f"integration method {self.name!r} needs the Python package(s) {', '.join(missing)}: "
                f"{self.install_hint}")
        if self.needs_r:
            from cellpix.steps.integrate.seurat import check_r

            check_r()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as missing
        return False


def correct(method: IntegrationMethod, task: IntegrationTask) -> np.ndarray:
    """Run ``method`` and put its output back on the reference's per-gene scale (when there is a reference)."""
    method.check_available()
    if len(task.batch_names) < 2:
        raise CellpixError(f"integration method {method.name!r} needs at least two batches; the data has one "
                           f"({task.batch_names[0] if task.batch_names else 'none'}). Pass --batch-key, or a "
                           "reference, or use --method none")
    corrected = np.asarray(method.run(task), dtype=np.float32)
    if corrected.shape != task.expression.shape:
        raise CellpixError(f"integration method {method.name!r} returned shape {corrected.shape}, expected "
                           f"{task.expression.shape}: methods must return expression for every cell and gene")
    corrected = np.where(np.isfinite(corrected), corrected, task.expression)
    if task.reference_batches and method.anchored:
        corrected = anchor_to_reference(task.expression, corrected, task.reference_mask)
    # A correction moves cells within the range the data spans; it must not invent expression beyond it
    # (a near-constant reference gene can give a steep per-gene map).
    return np.clip(corrected, 0.0, task.expression.max(axis=0))


def anchor_to_reference(original: np.ndarray, corrected: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map corrected values back to the reference's scale with one affine map per gene.

    Fitted on the reference cells (original ~ corrected), the map undoes
    whatever a method did to the reference; applied to every cell, it puts
    the query where the reference now is. For ComBat, whose per-batch change
    is affine in each gene, this gives exactly ComBat with the reference as
    the target batch; for the other methods it is the least-squares choice.
    """
    x = corrected[reference].astype(np.float64)
    y = original[reference].astype(np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    x_var = ((x - x_mean) ** 2).mean(axis=0)
    cov = ((x - x_mean) * (y - y_mean)).mean(axis=0)
    flat = x_var < 1e-12
    slope = np.where(flat, 1.0, cov / np.where(flat, 1.0, x_var))
    intercept = y_mean - slope * x_mean
    out = corrected * slope.astype(np.float32) + intercept.astype(np.float32)
    out[reference] = original[reference]
    return out


# -- the built-in methods ----------------------------------------------------------
def no_correction(task: IntegrationTask) -> np.ndarray:
    """Gene alignment and normalisation only."""
    return task.expression


def combat(task: IntegrationTask) -> np.ndarray:
    """scanpy's ComBat on expression; genes constant within a batch are left as they are (ComBat divides by 0)."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    expression = task.expression
    usable = np.ones(expression.shape[1], dtype=bool)
    for batch in task.batch_names:
        usable &= expression[task.batches == batch].var(axis=0) > 1e-8
    out = expression.copy()
    if not usable.any():
        return out
    view = ad.AnnData(X=expression[:, usable].astype(np.float64),
                      obs=pd.DataFrame({"batch": pd.Categorical(task.batches)},
                                       index=[str(i) for i in range(len(task.batches))]))
    sc.pp.combat(view, key="batch")
    out[:, usable] = view.X
    return out


def scanorama(task: IntegrationTask) -> np.ndarray:
    """Scanorama's corrected expression (mutual nearest neighbours, panoramic stitching).

    Scanorama scales every cell to unit length; each cell's own length is
    put back so the result stays on the log-expression scale. Scanorama has
    no reference batch: it stitches all batches into one panorama, so the
    query lands where the panorama puts the reference (close to, not exactly
    on, the reference's own values); the method is not anchored afterwards.
    """
    import scanorama as scanorama_lib

    order = task.batch_names
    parts = [task.expression[task.batches == b].astype(np.float64) for b in order]
    corrected, _ = scanorama_lib.correct(parts, [list(task.genes)] * len(parts), return_dense=True,
                                         verbose=False, seed=task.random_state)
    out = np.empty_like(task.expression)
    for batch, part, fixed in zip(order, parts, corrected, strict=True):
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        out[task.batches == batch] = np.asarray(fixed) * norms
    return out


def harmony(task: IntegrationTask) -> np.ndarray:
    """Harmony on principal components, then expression rebuilt from them — an approximation.

    Harmony corrects an embedding, not expression. The PCs are fitted on all
    cells (so they see the batch effect), Harmony moves the cells' scores, and each
    cell's expression is shifted by the same move mapped back through the
    loadings: ``X + (Z_harmony - Z) · Vᵀ``. What lies outside the top PCs is
    left as it was, so the correction only reaches variation the PCs capture.
    """
    import harmonypy
    import pandas as pd
    from sklearn.decomposition import PCA

    n_pcs = int(min(task.n_pcs, task.expression.shape[0] - 1, task.expression.shape[1] - 1))
    pca = PCA(n_components=n_pcs, random_state=task.random_state)
    scores = pca.fit_transform(task.expression)
    meta = pd.DataFrame({"batch": task.batches})
    result = harmonypy.run_harmony(scores, meta, ["batch"], random_state=task.random_state, verbose=False)
    moved = np.asarray(result.Z_corr)
    if moved.shape != scores.shape:  # harmonypy returns PCs × cells
        moved = moved.T
    return task.expression + (moved - scores).astype(np.float32) @ pca.components_.astype(np.float32)


def seurat(task: IntegrationTask) -> np.ndarray:
    """Seurat's anchor-based integration (CCA anchors, IntegrateData) in R through rpy2."""
    from cellpix.steps.integrate.seurat import integrate_with_seurat

    return integrate_with_seurat(task)


BUILTIN_METHODS: dict[str, IntegrationMethod] = {
    "none": IntegrationMethod("none", "No correction: gene alignment and log1p(CP10k) only.", no_correction),
    "combat": IntegrationMethod("combat", "ComBat (scanpy) on expression, the reference as target batch.", combat),
    "scanorama": IntegrationMethod(
        "scanorama", "Scanorama corrected expression (mutual nearest neighbours).", scanorama,
        python_modules=("scanorama",), install_hint="pip install 'cellpix[integration]' (or pip install scanorama)",
        anchored=False),
    "harmony": IntegrationMethod(
        "harmony", "Harmony on PCs, expression rebuilt from the corrected PCs (an approximation).", harmony,
        python_modules=("harmonypy",), install_hint="pip install 'cellpix[integration]' (or pip install harmonypy)"),
    "seurat": IntegrationMethod(
        "seurat", "Seurat v4 anchor-based integration in R (rpy2), the family the paper used (STACAS).", seurat,
        python_modules=("rpy2",), needs_r=True,
        install_hint="pip install 'cellpix[seurat]' (rpy2), plus R with Seurat: "
                     "apt-get install r-base-core r-cran-seurat (Debian/Ubuntu)"),
}
