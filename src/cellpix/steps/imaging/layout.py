"""Fit and store the gene → pixel layout (DeepInsight).

Genes are the points: a manifold (t-SNE by default) of the gene-by-cell
matrix puts genes with similar expression near each other, pyDeepInsight
rotates the layout to fill its minimum bounding rectangle, and a linear sum
assignment (``lsa``) gives each gene its own pixel, solved on tiles of the grid
(:mod:`cellpix.steps.imaging.assignment` says why and what it costs).

The layout is stored as JSON (never pickle), together with the pixel values'
pseudo-count and the per-gene min-max scaling fitted on the same reference,
so that a query is rendered exactly as the reference was.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpix import plugins
from cellpix.core.layout import (
    DEFAULT_LAYOUT_PRESET,
    DEFAULT_PSEUDO_COUNT,
    DISCRETIZATIONS,
    LAYOUT_PRESETS,
    GeneLayout,
)
from cellpix.errors import CellpixError, import_extra
from cellpix.steps.imaging.assignment import assign_pixels


def smallest_square(n_genes: int) -> int:
    """Side of the smallest square grid with a pixel for every gene (71 for 5,000 genes)."""
    return max(2, math.ceil(math.sqrt(n_genes)))


def minmax_range(X: np.ndarray | sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene minimum and maximum, the paper's scaling, fitted on the reference."""
    if sp.issparse(X):
        X = sp.csc_matrix(X)
        gmax = np.asarray(X.max(axis=0).todense()).ravel()
        gmin = np.asarray(X.min(axis=0).todense()).ravel()
    else:
        gmax, gmin = np.asarray(X).max(axis=0), np.asarray(X).min(axis=0)
    return gmin.astype(np.float32), gmax.astype(np.float32)


def stratified_subsample(labels: pd.Series | None, n_obs: int, max_cells: int, seed: int) -> np.ndarray:
    """Row indices of at most ``max_cells`` cells, keeping each label's share (and every label)."""
    rng = np.random.default_rng(seed)
    if n_obs <= max_cells:
        return np.arange(n_obs)
    if labels is None:
        return np.sort(rng.choice(n_obs, size=max_cells, replace=False))
    codes = pd.Categorical(labels.astype(str)).codes
    picked = []
    for code in np.unique(codes):
        members = np.flatnonzero(codes == code)
        take = max(1, round(len(members) * max_cells / n_obs))
        picked.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def layout_options(preset: str = DEFAULT_LAYOUT_PRESET, **given: Any) -> dict[str, Any]:
    """``fit_layout`` keyword arguments for a preset (:data:`LAYOUT_PRESETS`); options given (not None) win.

    t-SNE's own parameters are dropped when another manifold method is chosen.
    """
    if preset not in LAYOUT_PRESETS:
        raise CellpixError(f"unknown layout preset {preset!r}; choose from {', '.join(LAYOUT_PRESETS)}")
    options = {**LAYOUT_PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
    if options["method"] != "tsne":
        options = {k: v for k, v in options.items() if k not in ("perplexity", "early_exaggeration")}
    return options


def fit_layout(adata: ad.AnnData, *, preset: str = DEFAULT_LAYOUT_PRESET, groupby: str | None = None,
               symbol_column: str | None = None, random_state: int = 0, **options: Any) -> GeneLayout:
    """Fit a gene layout on a log-normalised reference (genes = the panel, in ``adata.var_names`` order).

    Parameters
    ----------
    adata
        Log-normalised reference; its ``var_names`` are the panel.
    preset
        One of :data:`cellpix.core.layout.LAYOUT_PRESETS`, the only place the layout's defaults are stated.
    groupby
        obs column to stratify the cells a manifold is fitted on; recorded as ``fit_info["stratified_by"]``.
    symbol_column
        var column of gene symbols, kept in the layout for plots and explanations.
    random_state
        Seed of the cell sample and the manifold.
    **options
        What wins over the preset (None: the preset's): ``method``, ``pixels``, ``discretization``,
        ``max_cells``, ``pseudo_count``, and the manifold's own parameters (``perplexity`` ...).

    Returns
    -------
    GeneLayout
        The genes' pixels, the pixel values' pseudo-count and the per-gene min-max scaling.
    """
    return _fit(adata, groupby=groupby, symbol_column=symbol_column, random_state=random_state,
                **layout_options(preset, **options))


def _fit(adata: ad.AnnData, method: str, discretization: str, max_cells: int | None, groupby: str | None,
         symbol_column: str | None, random_state: int, pixels: int | None = None,
         pseudo_count: float = DEFAULT_PSEUDO_COUNT, **method_params: Any) -> GeneLayout:
    """:func:`fit_layout` with every setting resolved. The manifold is fitted on a stratified subsample of at
    most ``max_cells`` cells; the min-max scaling on all cells. ``pseudo_count`` is k in the pixel value
    log(1 + CP10k / k) (:data:`cellpix.core.layout.DEFAULT_PSEUDO_COUNT` says why it is not 1)."""
    if discretization not in DISCRETIZATIONS:
        raise CellpixError(f"unknown discretization {discretization!r}; choose from {', '.join(DISCRETIZATIONS)}")
    n_genes = adata.n_vars
    if n_genes < 4:
        raise CellpixError(f"a layout needs at least 4 genes, the data has {n_genes}")
    size = int(pixels) if pixels else smallest_square(n_genes)
    if discretization == "lsa" and size * size < n_genes:
        raise CellpixError(
            f"{n_genes} genes cannot get a pixel each on a {size}×{size} grid; "
            f"use --pixels {smallest_square(n_genes)} or more"
        )
    factory = plugins.lookup("layout_methods", method, "layout method")
    estimator = factory(random_state=random_state, **method_params)

    if groupby and groupby not in adata.obs.columns:
        raise CellpixError(f"--groupby {groupby!r} is not an obs column; columns: "
                           f"{', '.join(map(str, adata.obs.columns)) or 'none'}")
    started = time.perf_counter()
    if getattr(estimator, "places_on_grid", False):
        coords, n_cells_fit = _placed_on_grid(estimator, method, n_genes, size, discretization), 0
    else:
        coords, n_cells_fit = _manifold_coords(adata, estimator, size, discretization, groupby, max_cells,
                                               random_state)
    seconds = time.perf_counter() - started
    gmin, gmax = minmax_range(adata.X)
    symbols = adata.var[symbol_column].astype(str).tolist() if symbol_column else None
    return GeneLayout(
        genes=adata.var_names.astype(str).tolist(),
        rows=coords[:, 0],
        cols=coords[:, 1],
        size=size,
        gene_min=gmin,
        gene_max=gmax,
        symbols=symbols,
        method=method,
        discretization=discretization,
        params={"random_state": random_state, **method_params},
        fit_info={"n_cells_fit": n_cells_fit, "n_cells_total": int(adata.n_obs), "fit_seconds": round(seconds, 2),
                  **({"stratified_by": groupby} if groupby and n_cells_fit else {})},  # the sample's strata
        pseudo_count=pseudo_count,
    )


def _placed_on_grid(method: Any, name: str, n_genes: int, size: int, discretization: str) -> np.ndarray:
    """(genes, 2) pixels from a layout method that places genes itself (``places_on_grid``): no cells needed."""
    if discretization != "lsa":
        raise CellpixError(f"the {name} layout gives each gene its own pixel; --discretization "
                           f"{discretization} applies to manifold methods")
    return method.grid(n_genes, size)


def _manifold_coords(adata: ad.AnnData, estimator: Any, size: int, discretization: str, groupby: str | None,
                     max_cells: int | None, random_state: int) -> tuple[np.ndarray, int]:
    """(genes, 2) pixels from a manifold of the genes fitted on a stratified cell sample, and that sample's size."""
    labels = adata.obs[groupby] if groupby else None
    if max_cells is not None and max_cells < 2:
        raise CellpixError(f"--max-cells must be at least 2, got {max_cells}")
    rows_used = stratified_subsample(labels, adata.n_obs, adata.n_obs if max_cells is None else max_cells,
                                     random_state)
    X = adata.X[rows_used]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float32)
    # Genes never expressed in the subsample have no neighbours to be placed by; a
    # tiny jitter keeps cosine distances defined without changing the layout.
    silent = ~np.any(X != 0, axis=0)
    if silent.any():
        X[:, silent] = np.random.default_rng(random_state).random((X.shape[0], int(silent.sum()))) * 1e-6
    transformer = _tiled_transformer()(feature_extractor=estimator, discretization=discretization, pixels=size)
    transformer.fit(X)
    return transformer.coords(), len(rows_used)  # coords: (n_genes, 2) row, col


def _tiled_transformer() -> type:
    """pyDeepInsight's ImageTransformer whose ``lsa`` assignment is solved on tiles (same cost, seconds)."""
    from scipy.optimize import linear_sum_assignment

    base = import_extra("pyDeepInsight", "image", "fitting a gene layout").ImageTransformer

    class TiledImageTransformer(base):
        @classmethod
        def coordinate_assignment(cls, position, px_size, solver):
            if solver is not linear_sum_assignment or px_size[0] != px_size[1]:
                return super().coordinate_assignment(position, px_size, solver)
            pixels = assign_pixels(cls.scale_coordinates(position, px_size), px_size[0], solver)
            return np.stack(np.divmod(pixels, px_size[0]), axis=1)

    return TiledImageTransformer


__all__ = ["GeneLayout", "fit_layout", "minmax_range", "smallest_square", "stratified_subsample"]
