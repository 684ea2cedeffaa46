"""A picture of a gene layout: mean expression per pixel, with marker genes labelled."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import numpy as np

from cellpix.core.layout import GEOMETRY_FREE_METHODS, GeneLayout
from cellpix.data.io import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MARKERS = ("CD3D", "CD3E", "CD79A", "CD79B", "MS4A1", "NKG7", "GNLY", "LYZ", "CD14", "S100A8", "CD34", "IL7R",
           "CD8A", "FOXP3", "PPBP", "HBB", "FCGR3A", "EPCAM", "COL1A1", "PECAM1")


def plot_layout(layout: GeneLayout, mean_scaled: np.ndarray, path: str | Path) -> Path:
    """The gene image of an average reference cell: mean scaled expression per pixel, empty pixels light grey,
    marker genes labelled where they sit (labels that would overlap an earlier one are left out)."""
    grid = np.full(layout.size * layout.size, np.nan)
    grid[layout.pixel_index] = mean_scaled
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#e8e8e8")
    shown = ax.imshow(grid.reshape(layout.size, layout.size), cmap=cmap, interpolation="nearest")
    fig.colorbar(shown, ax=ax, label="mean scaled expression", shrink=0.8)
    _label_markers(ax, layout)
    how = ("in panel order: no manifold, the per-pixel read-out does not use where a gene sits"
           if layout.method in GEOMETRY_FREE_METHODS else f"{layout.method}, {layout.discretization}")
    title = f"{layout.n_genes} genes on {layout.size}×{layout.size} pixels ({how}); grey: no gene"
    ax.set_title(textwrap.fill(title, 70), fontsize=10)  # one line was wider than the figure and cut off
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _label_markers(ax, layout: GeneLayout) -> None:
    """Red dots on the markers' pixels; each name in a white box, pointing inwards so it stays inside the image.
    Markers that sit close together share one box ("CD3D, CD3E"), so every dot is named and no box covers
    another."""
    names = [n.upper() for n in layout.display_names]
    min_gap = layout.size / 5  # about a label's width: nearer markers share their box
    groups: list[tuple[float, float, list[str]]] = []  # (x, y) of the first marker, and every name near it
    ink = {"color": "white", "linewidth": 0.6, "alpha": 0.8}  # a line from a shared box to each further marker
    for marker in MARKERS:
        if marker not in names:
            continue
        i = names.index(marker)
        x, y = float(layout.cols[i]), float(layout.rows[i])
        ax.plot(x, y, "o", color="red", markersize=4, markeredgecolor="white", markeredgewidth=0.5)
        near = next((g for g in groups if abs(x - g[0]) < min_gap and abs(y - g[1]) < min_gap / 4), None)
        if near is None:
            groups.append((x, y, [layout.display_names[i]]))
        else:
            near[2].append(layout.display_names[i])
            ax.plot([near[0], x], [near[1], y], **ink)
    for x, y, members in groups:
        dx = 6 if x < layout.size / 2 else -6
        ax.annotate(", ".join(members), (x, y), xytext=(dx, 4), textcoords="offset points", fontsize=7,
                    ha="left" if dx > 0 else "right", annotation_clip=True,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
