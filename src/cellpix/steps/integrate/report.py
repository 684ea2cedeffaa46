"""What `cellpix integrate` shows a person: QC numbers and distributions, and batch mixing before/after."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np

from cellpix.data.io import save_figure, write_text_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def write_reference_report(adata: ad.AnnData, folder: str | Path) -> list[Path]:
    """qc.json (what was filtered) and qc.png (genes per cell and mitochondrial fraction of kept cells)."""
    folder = Path(folder)
    report = adata.uns["cellpix_integrate"]
    json_path, png_path = folder / "qc.json", folder / "qc.png"
    write_text_atomic(json_path, json.dumps(_plain(report), indent=2, default=str))
    options = report.get("options", {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].hist(adata.obs["cellpix_n_genes"], bins=60, color="#4c72b0")
    axes[0].axvline(float(options.get("min_genes", 0)), color="red", linestyle="--", label="--min-genes")
    axes[0].set(xlabel="genes detected per cell", ylabel="cells",
                title=f"{report['n_cells_out']} cells kept, {report['n_cells_removed']} removed")
    axes[0].legend()
    mito = adata.obs["cellpix_mito_fraction"].to_numpy(dtype=float)
    if np.isfinite(mito).any():
        axes[1].hist(mito[np.isfinite(mito)], bins=60, color="#dd8452")
        axes[1].axvline(float(options.get("max_mito_fraction", 1)), color="red", linestyle="--",
                        label="--max-mito-fraction")
        axes[1].legend()
    else:
        axes[1].text(0.5, 0.5, str(report.get("mito_filter", "no mitochondrial genes")), ha="center", wrap=True)
    axes[1].set(xlabel="mitochondrial fraction", title=f"{report['n_genes_out']} panel genes")
    save_figure(fig, png_path)
    return [json_path, png_path]


def write_query_report(adata: ad.AnnData, folder: str | Path, batch_key: str | None) -> list[Path]:
    """integration.json and mixing.png: PCA of the query before and after correction, coloured by batch."""
    from sklearn.decomposition import PCA

    folder = Path(folder)
    report = adata.uns["cellpix_integrate"]
    json_path, png_path = folder / "integration.json", folder / "mixing.png"
    write_text_atomic(json_path, json.dumps(_plain(report), indent=2, default=str))
    labels = adata.obs[batch_key].astype(str).to_numpy() if batch_key else np.full(adata.n_obs, "query")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, layer, when in ((axes[0], "uncorrected", "before"), (axes[1], None, "after")):
        matrix = adata.layers[layer] if layer else adata.X
        dense = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
        scores = PCA(n_components=2, random_state=0).fit_transform(dense)
        for name in np.unique(labels):
            hit = labels == name
            ax.scatter(scores[hit, 0], scores[hit, 1], s=3, alpha=0.6, label=name)
        figures = report[f"mixing_{when}"].get("query_batches")
        extra = f"; silhouette {figures['silhouette']:+.2f}, kNN mixing {figures['knn_mixing']:.2f}" if figures else ""
        ax.set(title=f"{when} {report['method']}{extra}", xlabel="PC1", ylabel="PC2")
        ax.legend(markerscale=4, fontsize=8)
    save_figure(fig, png_path)
    return [json_path, png_path]


def _plain(value):
    """uns values come back from h5ad as numpy types; make them JSON-friendly."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
