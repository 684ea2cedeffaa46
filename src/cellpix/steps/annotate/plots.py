"""Figures people look at: UMAP of predictions, novelty map, per-type confidence, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd

from cellpix.data.io import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MAX_UMAP_CELLS = 20000


def embedding(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cell rows, 2-D coordinates): X_umap when present, else a UMAP of up to 20,000 cells."""
    if "X_umap" in adata.obsm:
        return np.arange(adata.n_obs), np.asarray(adata.obsm["X_umap"])[:, :2]
    import scanpy as sc

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(adata.n_obs, MAX_UMAP_CELLS, replace=False)) if adata.n_obs > MAX_UMAP_CELLS \
        else np.arange(adata.n_obs)
    probs = np.asarray(adata.obsm["cellpix_subtype_proba"])[rows] if "cellpix_subtype_proba" in adata.obsm else None
    view = ad.AnnData(X=np.asarray(probs if probs is not None else adata.X[rows]), obs=adata.obs.iloc[rows])
    sc.pp.neighbors(view, n_neighbors=15, use_rep="X", random_state=seed)
    sc.tl.umap(view, random_state=seed)
    return rows, np.asarray(view.obsm["X_umap"])


def _categorical_scatter(ax, xy: np.ndarray, values: pd.Series, title: str) -> None:
    cats = pd.Categorical(values)
    cmap = plt.get_cmap("tab20")
    for i, cat in enumerate(cats.categories):
        sel = np.asarray(cats == cat)
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=cmap(i % 20), label=f"{cat} ({sel.sum()})",
                       rasterized=True)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def plot_annotation(adata: ad.AnnData, folder: str | Path, prefix: str = "cellpix") -> list[Path]:
    """UMAP by predicted base and subtype, the novelty map, and confidence per type; returns the PNG paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows, xy = embedding(adata)
    obs = adata.obs.iloc[rows]
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    _categorical_scatter(axes[0], xy, obs["cellpix_base"], "cellpix base type")
    _categorical_scatter(axes[1], xy, obs["cellpix_subtype"], "cellpix subtype")
    fig.tight_layout()
    paths.append(folder / f"{prefix}_umap.png")
    save_figure(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(7, 5.5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=obs["cellpix_novelty_score"], s=4, cmap="magma", vmin=0, vmax=1,
                        rasterized=True)
    novel = obs["cellpix_is_novel"].to_numpy(dtype=bool)
    ax.scatter(xy[novel, 0], xy[novel, 1], s=14, facecolors="none", edgecolors="cyan", linewidths=0.6,
               label=f"flagged novel/rare ({novel.sum()})")
    fig.colorbar(points, ax=ax, label="base − subtype probability")
    ax.set_title("novelty map")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="upper right", fontsize=8)
    paths.append(folder / f"{prefix}_novelty.png")
    save_figure(fig, paths[-1])

    frame = adata.obs[["cellpix_subtype", "cellpix_base_probability", "cellpix_subtype_probability"]]
    order = frame.groupby("cellpix_subtype", observed=True)["cellpix_subtype_probability"].median().sort_values()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(order) + 1.5))
    data = [frame.loc[frame["cellpix_subtype"] == lab, "cellpix_subtype_probability"] for lab in order.index]
    ax.boxplot(data, vert=False, showfliers=False)
    ax.set_yticks(range(1, len(order) + 1), labels=order.index)
    ax.set_xlabel("subtype probability (within predicted base)")
    ax.set_xlim(0, 1.02)
    ax.set_title("confidence per predicted type")
    paths.append(folder / f"{prefix}_confidence.png")
    save_figure(fig, paths[-1])
    return paths


def plot_confusion(confusion: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts."""
    norm = confusion.div(confusion.sum(axis=1).replace(0, 1), axis=0)
    n = len(confusion)
    fig, ax = plt.subplots(figsize=(0.55 * n + 3, 0.5 * n + 2.5))
    ax.imshow(norm.to_numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=confusion.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=confusion.index, fontsize=8)
    for i in range(n):
        for j in range(n):
            value = confusion.iat[i, j]
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if norm.iat[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    path = Path(path)
    save_figure(fig, path)
    return path
