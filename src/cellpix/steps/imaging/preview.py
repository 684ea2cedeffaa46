"""A picture of a gene layout: mean expression per pixel, with marker genes labelled."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from cellpix.core.layout import GeneLayout
from cellpix.data.io import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MARKERS = ("CD3D", "CD3E", "CD79A", "CD79B", "MS4A1", "NKG7", "GNLY", "LYZ", "CD14", "S100A8", "CD34", "IL7R",
           "CD8A", "FOXP3", "PPBP", "HBB", "FCGR3A", "EPCAM", "COL1A1", "PECAM1")


def plot_layout(layout: GeneLayout, mean_scaled: np.ndarray, path: str | Path) -> Path:
    """Left: where genes sit (occupied pixels); right: mean scaled expression, markers labelled."""
    grid = np.full(layout.size * layout.size, np.nan)
    grid[layout.pixel_index] = mean_scaled
    occupied = np.zeros(layout.size * layout.size)
    np.add.at(occupied, layout.pixel_index, 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    axes[0].imshow(occupied.reshape(layout.size, layout.size), cmap="Greys", interpolation="nearest")
    axes[0].set_title(f"{layout.n_genes} genes on {layout.size}×{layout.size} ({layout.method}, "
                      f"{layout.discretization})")
    shown = axes[1].imshow(grid.reshape(layout.size, layout.size), cmap="viridis", interpolation="nearest")
    fig.colorbar(shown, ax=axes[1], label="mean scaled expression")
    names = [n.upper() for n in layout.display_names]
    for marker in MARKERS:
        if marker in names:
            i = names.index(marker)
            axes[1].annotate(layout.display_names[i], (layout.cols[i], layout.rows[i]), color="white", fontsize=7,
                             xytext=(3, 3), textcoords="offset points")
            axes[1].plot(layout.cols[i], layout.rows[i], "r.", markersize=4)
    axes[1].set_title("mean expression per gene pixel")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
