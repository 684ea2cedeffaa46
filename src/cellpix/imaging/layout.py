"""Fit and store the gene → pixel layout (DeepInsight).

Genes are the points: a manifold (t-SNE by default) of the gene-by-cell
matrix puts genes with similar expression near each other, pyDeepInsight
rotates the layout to fill its minimum bounding rectangle, and a linear sum
assignment (``lsa``) gives each gene its own pixel.

The layout is stored as JSON (never pickle), together with the per-gene
min-max scaling fitted on the same reference, so that a query is rendered
exactly as the reference was.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpix import plugins
from cellpix.errors import CellpixError, import_extra
from cellpix.io import write_text_atomic

LAYOUT_SCHEMA = "cellpix.layout/1"
DISCRETIZATIONS = ("lsa", "bin", "qtb", "sla", "ags")


@dataclass
class GeneLayout:
    """Where each gene of the panel sits on a square ``size`` × ``size`` grid, and how it is scaled."""

    genes: list[str]
    rows: np.ndarray
    cols: np.ndarray
    size: int
    gene_min: np.ndarray
    gene_max: np.ndarray
    symbols: list[str] | None = None
    method: str = "tsne"
    discretization: str = "lsa"
    params: dict[str, Any] = field(default_factory=dict)
    fit_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.cols = np.asarray(self.cols, dtype=np.int64)
        self.gene_min = np.asarray(self.gene_min, dtype=np.float32)
        self.gene_max = np.asarray(self.gene_max, dtype=np.float32)
        n = len(self.genes)
        for name in ("rows", "cols", "gene_min", "gene_max"):
            if len(getattr(self, name)) != n:
                raise CellpixError(f"layout: {name} has {len(getattr(self, name))} entries for {n} genes")
        if n and (self.rows.min() < 0 or self.cols.min() < 0 or max(self.rows.max(), self.cols.max()) >= self.size):
            raise CellpixError(f"layout: a pixel lies outside the {self.size}×{self.size} grid")

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def pixel_index(self) -> np.ndarray:
        """Flat pixel index (row * size + col) of every gene."""
        return self.rows * self.size + self.cols

    @property
    def display_names(self) -> list[str]:
        """Gene symbols when known (plots, explanations), else the panel IDs."""
        return list(self.symbols) if self.symbols else list(self.genes)

    def collision_report(self) -> dict[str, Any]:
        """How many genes share a pixel; with ``lsa`` this is zero by construction."""
        flat = self.pixel_index
        unique, counts = np.unique(flat, return_counts=True)
        shared = counts[counts > 1]
        return {
            "n_genes": self.n_genes,
            "grid": [self.size, self.size],
            "n_pixels": self.size * self.size,
            "occupied_pixels": len(unique),
            "pixel_fill_fraction": round(len(unique) / (self.size * self.size), 4),
            "genes_sharing_a_pixel": int(shared.sum()),
            "pixels_with_collisions": len(shared),
            "max_genes_per_pixel": int(counts.max()) if len(counts) else 0,
            "discretization": self.discretization,
        }

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": LAYOUT_SCHEMA,
            "size": self.size,
            "method": self.method,
            "discretization": self.discretization,
            "params": self.params,
            "fit_info": self.fit_info,
            "genes": list(self.genes),
            "symbols": list(self.symbols) if self.symbols else None,
            "rows": self.rows.tolist(),
            "cols": self.cols.tolist(),
            "scaling": {"method": "minmax", "min": self.gene_min.tolist(), "max": self.gene_max.tolist()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneLayout:
        if not isinstance(data, dict) or data.get("schema") != LAYOUT_SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise CellpixError(f"not a cellpix layout (schema {found!r}, expected {LAYOUT_SCHEMA!r})")
        return cls(
            genes=list(data["genes"]),
            rows=np.asarray(data["rows"]),
            cols=np.asarray(data["cols"]),
            size=int(data["size"]),
            gene_min=np.asarray(data["scaling"]["min"]),
            gene_max=np.asarray(data["scaling"]["max"]),
            symbols=data.get("symbols"),
            method=data.get("method", "unknown"),
            discretization=data.get("discretization", "unknown"),
            params=data.get("params", {}),
            fit_info=data.get("fit_info", {}),
        )

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> GeneLayout:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CellpixError(f"{path}: no such layout file") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CellpixError(f"{path}: not a JSON layout file ({exc})") from exc
        return cls.from_dict(data)

    def to_frame(self) -> pd.DataFrame:
        """One row per gene: id, symbol, row, col, scaling range (for people and spreadsheets)."""
        return pd.DataFrame(
            {
                "gene": self.genes,
                "symbol": self.display_names,
                "row": self.rows,
                "col": self.cols,
                "min": self.gene_min,
                "max": self.gene_max,
            }
        )


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


# The published layout (scHDeepInsight; docs in ../shared/docs/method.md): 224 px, one gene per pixel, t-SNE with
# cosine distance (the built-in t-SNE's metric), perplexity 70, early exaggeration 8, PCA initialisation, fitted on
# every reference cell rather than a subsample.
PAPER_LAYOUT: dict[str, Any] = {"pixels": 224, "method": "tsne", "perplexity": 70.0, "early_exaggeration": 8.0,
                                "max_cells": None}


def layout_options(preset: str = "default", **given: Any) -> dict[str, Any]:
    """``fit_layout`` keyword arguments for a preset ("default" or "paper"); options given (not None) win.

    t-SNE's own parameters are dropped when another manifold method is chosen.
    """
    if preset not in ("default", "paper"):
        raise CellpixError(f"unknown layout preset {preset!r}; choose default or paper")
    options = {**(PAPER_LAYOUT if preset == "paper" else {}), **{k: v for k, v in given.items() if v is not None}}
    if options.get("method", "tsne") != "tsne":
        options = {k: v for k, v in options.items() if k not in ("perplexity", "early_exaggeration")}
    return options


def fit_layout(
    adata: ad.AnnData,
    method: str = "tsne",
    pixels: int | None = None,
    discretization: str = "lsa",
    max_cells: int | None = 2000,
    groupby: str | None = None,
    symbol_column: str | None = None,
    random_state: int = 0,
    **method_params: Any,
) -> GeneLayout:
    """Fit a gene layout on a log-normalised reference (genes = the panel, in ``adata.var_names`` order).

    The manifold is fitted on a stratified subsample of at most ``max_cells``
    cells (t-SNE of 5,000 genes is dominated by its cost in cells); the
    min-max scaling is fitted on all cells.
    """
    ImageTransformer = import_extra("pyDeepInsight", "image", "fitting a gene layout").ImageTransformer

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

    started = time.perf_counter()
    transformer = ImageTransformer(feature_extractor=estimator, discretization=discretization, pixels=size)
    transformer.fit(X)
    seconds = time.perf_counter() - started
    coords = np.asarray(transformer._coords)  # (n_genes, 2): row, col
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
        fit_info={"n_cells_fit": len(rows_used), "n_cells_total": int(adata.n_obs), "fit_seconds": round(seconds, 2)},
    )


__all__ = ["GeneLayout", "fit_layout", "minmax_range", "smallest_square", "stratified_subsample"]
