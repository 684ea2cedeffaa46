"""Figures people look at: UMAP of predictions, novelty map, per-type confidence, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd

from cellpix.data.inputs import TARGET_SUM
from cellpix.data.io import save_figure
from cellpix.steps.annotate.results import PCA_KEY

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MAX_UMAP_CELLS = 20000
MIN_UMAP_CELLS = 10  # fewer cells have no neighbourhood to draw
FLAGGED = "#d62728"


def embedding(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cell rows, 2-D coordinates) of the query's *expression*: ``X_umap`` when present, else a UMAP of the
    query's own principal components (``obsm['X_cellpix_pca']``, or a PCA of its log-normalised X) for up to
    20,000 cells. Never of predicted probabilities, whose clusters would equal the calls by construction."""
    if "X_umap" in adata.obsm:
        return np.arange(adata.n_obs), np.asarray(adata.obsm["X_umap"])[:, :2]
    import scanpy as sc

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(adata.n_obs, MAX_UMAP_CELLS, replace=False)) if adata.n_obs > MAX_UMAP_CELLS \
        else np.arange(adata.n_obs)
    if PCA_KEY in adata.obsm:
        view = ad.AnnData(X=np.zeros((len(rows), 0), np.float32), obsm={"X_pca": np.asarray(adata.obsm[PCA_KEY])[rows]})
    else:
        view = _own_pca(adata, rows, seed)
    sc.pp.neighbors(view, n_neighbors=min(15, len(rows) - 1), use_rep="X_pca", random_state=seed)
    sc.tl.umap(view, random_state=seed)
    return rows, np.asarray(view.obsm["X_umap"])


def _own_pca(adata: ad.AnnData, rows: np.ndarray, seed: int) -> ad.AnnData:
    """A PCA of the query's expression for a file annotated without clusters: log-normalised counts (or the
    values as they are, when they are not counts), the most variable genes, scaled."""
    import scanpy as sc
    import scipy.sparse as sp

    x = adata.X[rows]
    x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    view = ad.AnnData(X=x)
    data = x.data if sp.issparse(x) else x
    if data.size and data.min() >= 0 and np.allclose(data[:10000], np.round(data[:10000])):
        sc.pp.normalize_total(view, target_sum=TARGET_SUM)
        sc.pp.log1p(view)
    if data.size and data.min() >= 0:
        sc.pp.highly_variable_genes(view, n_top_genes=min(2000, view.n_vars), flavor="seurat", subset=True)
    sc.pp.scale(view, max_value=10)
    sc.tl.pca(view, n_comps=max(1, min(30, view.n_obs - 1, view.n_vars - 1)), random_state=seed)
    return view


def _categorical_scatter(ax, xy: np.ndarray, values: pd.Series, title: str, highlight: set[str] = frozenset()
                         ) -> None:
    """One colour per category, largest first underneath; ``highlight`` categories drawn last, larger, in red
    shades, so a small flagged population is never hidden under a large one."""
    cats = pd.Categorical(values)
    counts = pd.Series(np.asarray(cats.codes)).value_counts()
    order = [cats.categories[c] for c in counts.index if c >= 0]
    order = [c for c in order if c not in highlight] + [c for c in order if c in highlight]
    cmap = plt.get_cmap("tab20")
    size = _point_size(len(xy))
    reds = iter(["#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22"])
    for cat in order:
        sel = np.asarray(cats == cat)
        colour = next(reds, FLAGGED) if cat in highlight else cmap(list(cats.categories).index(cat) % 20)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=3 * size if cat in highlight else size, color=colour,
                   label=f"{cat or 'none'} ({sel.sum()})", rasterized=True,
                   edgecolors="black" if cat in highlight else "none", linewidths=0.3)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _point_size(n: int) -> float:
    """Marker area for ``n`` points: large enough to see in a few hundred cells, small enough for 20,000."""
    return float(np.clip(6000 / max(n, 1), 2, 30))


def plot_annotation(adata: ad.AnnData, folder: str | Path, prefix: str = "cellpix") -> list[Path]:
    """UMAP of the query's expression coloured by call, answer and novelty; the novelty map; confidence per type.
    Returns the PNG paths (no UMAP pictures for a query of fewer than 10 cells)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if adata.n_obs >= MIN_UMAP_CELLS:
        rows, xy = embedding(adata)
        obs = adata.obs.iloc[rows]
        paths += [_umap_figure(obs, xy, folder / f"{prefix}_umap.png"),
                  _novelty_figure(obs, xy, folder / f"{prefix}_novelty.png")]
    paths.append(_confidence_figure(adata.obs, folder / f"{prefix}_confidence.png"))
    return paths


def _umap_figure(obs: pd.DataFrame, xy: np.ndarray, path: Path) -> Path:
    answer = "cellpix_label" if "cellpix_label" in obs else "cellpix_base"
    unknown = {c for c in pd.unique(obs[answer].astype(str)) if c == "unknown" or c.endswith("(new subtype)")}
    fig, axes = plt.subplots(1, 3, figsize=(22, 6))
    _categorical_scatter(axes[0], xy, obs["cellpix_subtype"].astype(str), "each cell's own call (cellpix_subtype)")
    _categorical_scatter(axes[1], xy, obs[answer].astype(str),
                         "answer per cluster (cellpix_label: consensus, or unknown)" if answer == "cellpix_label"
                         else "base type", highlight=unknown)
    reason = obs["cellpix_novelty_reason"].astype(str).replace("", "not flagged")
    _categorical_scatter(axes[2], xy, reason, "why a cell is flagged (cellpix_novelty_reason)",
                         highlight=set(pd.unique(reason)) - {"not flagged"})
    fig.suptitle("UMAP of the query's own expression (its principal components), not of the predictions",
                 fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _novelty_figure(obs: pd.DataFrame, xy: np.ndarray, path: Path) -> Path:
    novel = obs["cellpix_is_novel"].to_numpy(dtype=bool)
    fig, ax = plt.subplots(figsize=(8, 6))
    size = _point_size(len(xy))
    ax.scatter(xy[~novel, 0], xy[~novel, 1], s=size, color="#c7c7c7", rasterized=True,
               label=f"not flagged ({(~novel).sum()})")
    ax.scatter(xy[novel, 0], xy[novel, 1], s=3 * size, color=FLAGGED, edgecolors="black", linewidths=0.3,
               rasterized=True, label=f"flagged novel ({novel.sum()})")
    if "cellpix_cluster" in obs and "cellpix_label" in obs:
        for cluster, cells in obs.groupby("cellpix_cluster", observed=True):
            label = str(cells["cellpix_label"].iloc[0])
            if label == "unknown" or label.endswith("(new subtype)"):
                centre = np.median(xy[obs.index.get_indexer(cells.index)], axis=0)
                ax.annotate(f"cluster {cluster}: {label}", centre, fontsize=8, ha="center",
                            bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
    ax.set_title("cells flagged as unlike the reference (cellpix_is_novel)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    save_figure(fig, path)
    return path


def _confidence_figure(obs: pd.DataFrame, path: Path) -> Path:
    """The probability that decided each call: the subtype's (within its base) for a type with subtypes, the base
    type's for a terminal type, whose subtype probability is 1 by construction."""
    terminal = obs["cellpix_subtype"].astype(str).to_numpy() == obs["cellpix_base"].astype(str).to_numpy()
    confidence = np.where(terminal, obs["cellpix_base_probability"], obs["cellpix_subtype_probability"])
    frame = pd.DataFrame({"type": obs["cellpix_subtype"].astype(str).to_numpy(), "confidence": confidence,
                          "terminal": terminal})
    order = frame.groupby("type")["confidence"].median().sort_values()
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(order) + 1.6))
    data = [frame.loc[frame["type"] == t, "confidence"] for t in order.index]
    ax.boxplot(data, vert=False, showfliers=False)
    names = [f"{t} (base)" if frame.loc[frame["type"] == t, "terminal"].all() else t for t in order.index]
    ax.set_yticks(range(1, len(order) + 1), labels=names)
    ax.set_xlabel("probability of the call: subtype's within its base; base type's for '(base)' types")
    ax.set_xlim(0, 1.02)
    ax.set_title("confidence per predicted type")
    save_figure(fig, path)
    return path


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
