"""Figures people look at: a UMAP of the query's own expression coloured by the calls, the novelty map, the
confidence per type, the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd

from cellpix.core.consensus import is_flagged_answer
from cellpix.data.inputs import TARGET_SUM
from cellpix.data.io import save_figure
from cellpix.steps.annotate.results import PCA_KEY

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MAX_UMAP_CELLS = 20000
MIN_UMAP_CELLS = 10  # fewer cells have no neighbourhood to draw


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
    add_neighbour_graph(view, min(15, len(rows) - 1), seed)
    sc.tl.umap(view, random_state=seed)
    return rows, np.asarray(view.obsm["X_umap"])


def add_neighbour_graph(view: ad.AnnData, k: int, seed: int) -> None:
    """The graph ``sc.tl.umap`` lays out, as ``sc.pp.neighbors(view, use_rep="X_pca")`` stores it, built by
    :mod:`cellpix.core.neighbours` (exact neighbours, UMAP's weights). scanpy 1.11.5 with scipy 1.17 fails above
    4,096 cells, where it hands pynndescent's ``csr_array`` to a ``getnnz`` that scipy removed
    (``cellpix annotate --plots`` of 10,000 cells stopped with that AttributeError); below, it spends half a
    minute compiling pynndescent's kernels in every new process."""
    import scipy.sparse as sp

    from cellpix.core.neighbours import fuzzy_weights, nearest

    indices, distances = nearest(np.asarray(view.obsm["X_pca"], dtype=np.float32), k)
    n = len(indices)
    other = indices != np.arange(n)[:, None]  # scanpy's distances leave each cell itself out
    rows = np.repeat(np.arange(n), indices.shape[1]).reshape(indices.shape)
    view.obsp["distances"] = sp.csr_matrix((distances[other], (rows[other], indices[other])), shape=(n, n))
    view.obsp["connectivities"] = fuzzy_weights(indices, distances)
    view.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances",
                             "params": {"n_neighbors": k, "method": "umap", "random_state": seed,
                                        "metric": "euclidean", "use_rep": "X_pca"}}


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


# Flagged categories (unknown, new subtype, each novelty reason) in warm colours, each its own; known types in cool
# ones only, so an "unknown" cluster never shares a colour with a known type (tab20 gave CD19+ B and "unknown" the
# same orange); cells not flagged in grey.
WARM = ("#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#7f0000", "#bcbd22", "#fdae61", "#f7b6d2", "#c49c94", "#000000")
COOL = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#393b79", "#637939", "#7b4173", "#aec7e8", "#98df8a",
        "#c5b0d5", "#9edae5", "#5254a3")  # the most distinct first: the largest populations get them
NEUTRAL = "#c7c7c7"
NOT_FLAGGED = "not flagged"


def category_colours(known: list[str], flagged: list[str], neutral: list[str] = ()) -> dict[str, str]:
    """A colour per category: :data:`COOL` for known types, :data:`WARM` for flagged categories and grey for
    ``neutral`` ones, so no flagged category shares a colour with another (up to 10 flagged and 12 known; beyond,
    colours repeat within a group)."""
    return {**{c: COOL[i % len(COOL)] for i, c in enumerate(known)},
            **{c: WARM[i % len(WARM)] for i, c in enumerate(flagged)},
            **dict.fromkeys(neutral, NEUTRAL)}


def _categorical_scatter(ax, xy: np.ndarray, values: pd.Series, title: str, colours: dict[str, str],
                         highlight: set[str] = frozenset()) -> None:
    """One colour per category (``colours``), largest first underneath; ``highlight`` categories drawn last,
    larger and outlined, so a small flagged population is never hidden under a large one."""
    cats = pd.Categorical(values)
    counts = pd.Series(np.asarray(cats.codes)).value_counts()
    order = [cats.categories[c] for c in counts.index if c >= 0]
    order = [c for c in order if c not in highlight] + [c for c in order if c in highlight]
    size = _point_size(len(xy))
    for cat in order:
        sel = np.asarray(cats == cat)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=3 * size if cat in highlight else size, color=colours[cat],
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
                  _novelty_figure(obs, xy, folder / f"{prefix}_novelty.png", piece_batches(adata.uns))]
    branching = adata.uns.get("cellpix", {}).get("branching_base_types")
    paths.append(_confidence_figure(adata.obs, folder / f"{prefix}_confidence.png",
                                    None if branching is None else [str(b) for b in branching]))
    return paths


def _umap_figure(obs: pd.DataFrame, xy: np.ndarray, path: Path) -> Path:
    answer = "cellpix_label" if "cellpix_label" in obs else "cellpix_base"
    calls, answers = obs["cellpix_subtype"].astype(str), obs[answer].astype(str)
    unknown = sorted(c for c in pd.unique(answers) if is_flagged_answer(c))
    sizes = pd.concat([calls, answers]).value_counts()
    known = sorted(set(sizes.index) - set(unknown), key=lambda c: (-sizes[c], c))
    colours = category_colours(known, unknown)  # a type keeps its colour from the first panel to the second
    fig, axes = plt.subplots(1, 3, figsize=(22, 6))
    _categorical_scatter(axes[0], xy, calls, "each cell's own call (cellpix_subtype)", colours)
    _categorical_scatter(axes[1], xy, answers,
                         "answer per cluster (cellpix_label: consensus, or unknown)" if answer == "cellpix_label"
                         else "base type", colours, highlight=set(unknown))
    reason = obs["cellpix_novelty_reason"].astype(str).replace("", NOT_FLAGGED)
    reasons = sorted(set(pd.unique(reason)) - {NOT_FLAGGED})
    _categorical_scatter(axes[2], xy, reason, "why a cell is flagged (cellpix_novelty_reason)",
                         category_colours([], reasons, [NOT_FLAGGED]), highlight=set(reasons))
    fig.suptitle("UMAP of the query's own expression (its principal components), not of the predictions",
                 fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def piece_batches(uns: dict) -> dict[str, str]:
    """Each cluster piece's batch (``cellpix_cluster`` name → batch) when the query's batches were judged apart;
    empty otherwise."""
    table = uns.get("cellpix", {}).get("clusters") or {}
    if "batch" not in table:
        return {}
    return {str(name): str(batch) for name, batch in zip(table["cluster"], table["batch"], strict=True)}


def _novelty_figure(obs: pd.DataFrame, xy: np.ndarray, path: Path, batches: dict[str, str] | None = None) -> Path:
    novel = obs["cellpix_is_novel"].to_numpy(dtype=bool)
    fig, ax = plt.subplots(figsize=(8, 6))
    size = _point_size(len(xy))
    ax.scatter(xy[~novel, 0], xy[~novel, 1], s=size, color=NEUTRAL, rasterized=True,
               label=f"{NOT_FLAGGED} ({(~novel).sum()})")
    ax.scatter(xy[novel, 0], xy[novel, 1], s=3 * size, color=WARM[0], edgecolors="black", linewidths=0.3,
               rasterized=True, label=f"flagged novel ({novel.sum()})")
    if "cellpix_cluster" in obs and "cellpix_label" in obs:
        _label_flagged_clusters(ax, obs, xy, batches or {})
    ax.set_title("cells flagged as unlike the reference (cellpix_is_novel)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    save_figure(fig, path)
    return path


def _label_flagged_clusters(ax, obs: pd.DataFrame, xy: np.ndarray, batches: dict[str, str]) -> None:
    """Mark each unknown or new-subtype cluster with its number beside its flagged cells (a few points off, no box,
    so no flagged cell is hidden) and name it in the legend (:func:`flagged_marks`)."""
    for text, legend, rows in flagged_marks(obs, batches):
        ax.annotate(text, np.median(xy[rows], axis=0), xytext=(7, 7), textcoords="offset points", fontsize=9,
                    fontweight="bold")
        ax.plot([], [], " ", label=legend)


def flagged_marks(obs: pd.DataFrame, batches: dict[str, str]) -> list[tuple[str, str, np.ndarray]]:
    """(mark, legend entry, rows of ``obs``) of each cluster with a flagged answer: "5", "cluster 5: CD14+ (new
    subtype)". With batches judged apart (``batches``: piece → batch), a cluster's pieces share one place in the
    query's UMAP, and marked one by one their names were printed over each other ("ctrl:8" on "stim:8"): each
    cluster is marked once, naming the batches where it is flagged ("8 (ctrl, stim)", "cluster 8 (ctrl, stim):
    unknown", or each batch's answer when they differ)."""
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for piece, cells in obs.groupby("cellpix_cluster", observed=True):
        label = str(cells["cellpix_label"].iloc[0])
        if not is_flagged_answer(label):
            continue
        batch = batches.get(str(piece), "")
        cluster = str(piece)[len(batch) + 1:] if batch and str(piece).startswith(batch + ":") else str(piece)
        found.setdefault(cluster, []).append((batch, label, obs.index.get_indexer(cells.index)))
    marks = []
    for cluster, pieces in found.items():
        rows = np.concatenate([r for _, _, r in pieces])
        names = [b for b, _, _ in pieces if b]
        text = f"{cluster} ({', '.join(names)})" if names else cluster
        labels = {label for _, label, _ in pieces}
        legend = f"cluster {text}: {labels.pop()}" if len(labels) == 1 else \
            f"cluster {cluster}: " + "; ".join(f"{b} {label}" for b, label, _ in pieces)
        marks.append((text, legend, rows))
    return marks


def decisive_confidence(obs: pd.DataFrame, branching: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """(each cell's deciding probability, whether it is its base type's): the base probability where the called
    base type has no choice of subtypes (not in ``branching``; None: a file without the list, where only a call
    equal to its base counts), else the subtype's within its base."""
    base = obs["cellpix_base"].astype(str).to_numpy()
    terminal = ~np.isin(base, list(branching)) if branching is not None \
        else obs["cellpix_subtype"].astype(str).to_numpy() == base
    confidence = np.where(terminal, obs["cellpix_base_probability"], obs["cellpix_subtype_probability"])
    return confidence, terminal


def _confidence_figure(obs: pd.DataFrame, path: Path, branching: list[str] | None = None) -> Path:
    """The probability that decided each call: the subtype's (within its base) for a base type with several
    subtypes (``branching``, from ``uns['cellpix']['branching_base_types']``), the base type's otherwise, whose
    subtype probability is 1 by construction (CD14+ Monocyte, the only subtype of CD14+, as much as CD34+)."""
    confidence, terminal = decisive_confidence(obs, branching)
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
