"""The gene layout: which pixel each panel gene takes, and how a gene's value becomes a pixel value (a shifted
logarithm, then the per-gene min-max scaling fitted on the reference). Fitted by the imaging step
(:func:`cellpix.steps.imaging.layout.fit_layout`); read by every step after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellpix.core.fields import check_fields, count, finite, listing, mapping, positive, positive_int, text
from cellpix.errors import CellpixError

LAYOUT_SCHEMA = "cellpix.layout/1"
DISCRETIZATIONS = ("lsa", "bin", "qtb", "sla", "ags")
# A pixel holds log(1 + CP10k / k), min-max scaled per gene: k is a pseudo-count in counts per 10,000, and k = 1 is
# the usual log1p(CP10k). Why 100: log1p(CP10k) makes a gene's first UMI (about 7 CP10k at 1,400 UMIs a cell) most
# of its range, so a classifier reads detection events, which sampling depth decides, more than expression levels.
# With k = 100 (about 1 % of a cell's UMIs), on the Zheng sorted PBMC (5 folds) the per-pixel read-out rose from
# subtype macro-F1 0.836 to 0.862, from 0.748 to 0.797 on test folds thinned to 30 % of their counts, and from 0.761
# to 0.910 lineage accuracy on Kang 2018 control PBMC (a logistic regression on the same pixels: 0.868 / 0.795 /
# 0.806); k = 30 scored alike, k = 1,000 lower on a small reference (Puram accuracy 0.925 against 0.950)
# (`python -m benchmarks.probe_pixels`, seed 0).
DEFAULT_PSEUDO_COUNT = 100.0
# Layout methods that place genes without a manifold (the panel's order): a model that reads neighbouring pixels
# (a convolutional trunk) learns nothing from where a gene sits on them.
GEOMETRY_FREE_METHODS = ("ordered",)

# A manifold layout: t-SNE of the genes (cosine distance, PCA initialisation), each gene described by its values in
# a stratified sample of 2,000 cells, then one gene per pixel by assignment. The sample bounds the gene-gene
# distances (1.1 s for 5,000 genes); t-SNE's 1,000 iterations over the genes take the rest, 22-29 s on 2 cores
# (python -m benchmarks.probe_tsne).
MANIFOLD_LAYOUT: dict[str, Any] = {"method": "tsne", "discretization": "lsa", "max_cells": 2000}
# The published layout (scHDeepInsight; docs in ../shared/docs/method.md): 224 px, one gene per pixel, t-SNE with
# cosine distance (the built-in t-SNE's metric), perplexity 70, early exaggeration 8, PCA initialisation, fitted on
# every reference cell rather than a subsample; pixels are min-max scaled log1p(CP10k) (pseudo-count 1).
PAPER_LAYOUT: dict[str, Any] = {**MANIFOLD_LAYOUT, "pixels": 224, "perplexity": 70.0, "early_exaggeration": 8.0,
                                "max_cells": None, "pseudo_count": 1.0}
# One per training preset (cellpix.steps.train presets of the same names), and the only place layout defaults are
# stated: every way in (cx.fit_layout, the step's fit_layout, cellpix image, Galaxy, Nextflow) starts from one of
# these. The cpu preset's per-pixel read-out gives every pixel its own weights, so where a gene sits cannot change
# the model: its layout is the panel's order (no manifold, no assignment; milliseconds). The trunk reads
# neighbouring pixels, so it gets the t-SNE layout, and the paper preset the published one.
LAYOUT_PRESETS: dict[str, dict[str, Any]] = {"cpu": {**MANIFOLD_LAYOUT, "method": "ordered"},
                                             "trunk": MANIFOLD_LAYOUT, "paper": PAPER_LAYOUT}
DEFAULT_LAYOUT_PRESET = "cpu"


def _texts(value: Any, where: str) -> list[str]:
    return listing(value, where, text)


def _texts_or_none(value: Any, where: str) -> list[str] | None:
    return None if value is None else _texts(value, where)


def _pixels(value: Any, where: str) -> list[int]:
    return listing(value, where, count)


def _finites(value: Any, where: str) -> list[float]:
    return listing(value, where, finite)


LAYOUT_FIELDS = ({"size": positive_int, "genes": _texts, "rows": _pixels, "cols": _pixels, "scaling": mapping},
                 {"symbols": _texts_or_none, "method": text, "discretization": text, "params": mapping,
                  "fit_info": mapping})
SCALING_FIELDS = ({"min": _finites, "max": _finites}, {"pseudo_count": positive, "method": text})


def check_layout_fields(data: dict[str, Any]) -> None:
    """Every field of a layout of the type and in the range the renderer needs (:mod:`cellpix.core.fields`): a
    hand-edited ``layout.json`` is refused in one line naming the field."""
    check_fields(data, "layout", *LAYOUT_FIELDS)
    check_fields(data["scaling"], "layout.scaling", *SCALING_FIELDS)


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
    # 1: pixels are min-max scaled log1p(CP10k), as in layouts written before the pseudo-count existed; new layouts
    # get DEFAULT_PSEUDO_COUNT from fit_layout.
    pseudo_count: float = 1.0

    def __post_init__(self) -> None:
        self.pseudo_count = float(self.pseudo_count)
        if not (np.isfinite(self.pseudo_count) and self.pseudo_count > 0):
            raise CellpixError(f"layout: the pseudo-count must be a positive number, got {self.pseudo_count}")
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.cols = np.asarray(self.cols, dtype=np.int64)
        self.gene_min = np.asarray(self.gene_min, dtype=np.float32)
        self.gene_max = np.asarray(self.gene_max, dtype=np.float32)
        n = len(self.genes)
        if self.symbols is not None and len(self.symbols) != n:
            raise CellpixError(f"layout: symbols has {len(self.symbols)} entries for {n} genes")
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
            # min and max are in the panel's log1p(CP10k) units; the renderer applies the pseudo-count to both
            "scaling": {"method": "minmax", "min": self.gene_min.tolist(), "max": self.gene_max.tolist(),
                        "pseudo_count": self.pseudo_count},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneLayout:
        if not isinstance(data, dict) or data.get("schema") != LAYOUT_SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise CellpixError(f"not a cellpix layout (schema {found!r}, expected {LAYOUT_SCHEMA!r})")
        check_layout_fields(data)
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
            pseudo_count=data["scaling"].get("pseudo_count", 1.0),
        )

    def save(self, path: str | Path) -> None:
        from cellpix.data.io import write_text_atomic  # anndata: not needed to read a layout, nor by the CLI's start

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
        try:
            return cls.from_dict(data)
        except CellpixError as exc:
            raise CellpixError(f"{path}: {exc}") from exc

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
