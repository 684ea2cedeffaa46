"""Leave one subtype out: is a never-seen subtype flagged as novel, and how often are known cells?

For each T-cell subtype of the Zheng sorted PBMC (the only base type with subtypes, so the only one the paper's
score can flag) and each seed, cellpix is trained as shipped (the default model and schedule, the bundle's
calibrated 5 % thresholds) on 70 % of the other cells, with gene selection and layout fitted on those cells alone.
It then annotates the other 30 % plus every cell of the held-out subtype, with its cluster consensus.

Two figures answer different questions:
- ``flagged_held_out`` vs ``flagged_known``: what a user sees, with the threshold
  calibrated on the reference's validation split (per predicted subtype);
- ``auroc`` and ``caught_at_5pct_known``: how well the score ranks the new cells,
  the latter with the threshold that exactly 5 % of known query cells exceed.

``flagged_by_cluster_*``: the share whose cluster the consensus flags (unknown or new subtype). A model-free
yardstick runs beside it: the mean distance of each query cell to its 10 nearest reference cells in a
50-component PCA of the same panel. Where that cannot tell a subtype from the known ones either, the data, not the
model, set the limit. SingleR (where R has it) runs on the same split with every gene: ``singler_pruned_*`` is the
share of cells whose label its ``pruneScores`` drops (its own flag), ``singler_auroc`` ranks by its ``delta.next``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from benchmarks import singler
from benchmarks.accuracy import LABEL, fold_reference_and_layout, log_normalised
from benchmarks.common import ZHENG, require

SUBTYPES = ("CD4+/CD25 T Reg", "CD4+ T Helper2", "CD4+/CD45RO+ Memory", "CD4+/CD45RA+/CD25- Naive T",
            "CD8+ Cytotoxic T", "CD8+/CD45RA+ Naive Cytotoxic")
SEEDS = (0, 1)
QUERY_SHARE = 0.3
YARDSTICK_NEIGHBOURS = 10


def split_without(labels: np.ndarray, held_out: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(reference rows, query rows): the query is a stratified 30 % of known cells plus every held-out cell."""
    from cellpix.steps.train.data import stratified_split

    known = np.flatnonzero(labels != held_out)
    fit, unseen = stratified_split(labels[known], QUERY_SHARE, seed=seed)
    return np.sort(known[fit]), np.sort(np.concatenate([known[unseen], np.flatnonzero(labels == held_out)]))


def caught_at(scores: np.ndarray, is_new: np.ndarray, known_rate: float = 0.05) -> float:
    """Share of new cells above the score that ``known_rate`` of known cells exceed."""
    return float(np.mean(scores[is_new] > np.quantile(scores[~is_new], 1 - known_rate)))


def neighbour_distance(reference: ad.AnnData, query: ad.AnnData, layout: Any) -> np.ndarray:
    """Mean distance to the nearest reference cells in a PCA of the panel: novelty without any model."""
    from cellpix.data.panel import open_on_panel

    reader = open_on_panel(query, layout.genes, layout.symbols)  # as annotate reads it
    ref_x = reference.X.toarray() if sp.issparse(reference.X) else np.asarray(reference.X)
    pca = PCA(50, random_state=0).fit(ref_x)
    ref_pcs = pca.transform(ref_x)
    query_pcs = pca.transform(reader.rows(0, query.n_obs).toarray())
    distances, _ = NearestNeighbors(n_neighbors=YARDSTICK_NEIGHBOURS).fit(ref_pcs).kneighbors(query_pcs)
    return distances.mean(axis=1)


def held_out_row(raw: ad.AnnData, held_out: str, seed: int, epochs: int | None, n_genes: int,
                 yardstick: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Train without ``held_out`` and score the query; the yardstick is computed once per subtype."""
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
    from cellpix.steps.train.trainer import TrainConfig, train

    labels = raw.obs[LABEL].astype(str).to_numpy()
    ref_rows, query_rows = split_without(labels, held_out)
    ref, layout, _ = fold_reference_and_layout(raw[ref_rows].copy(), n_genes, None)
    query = raw[query_rows].copy()
    is_new = (query.obs[LABEL].astype(str) == held_out).to_numpy()
    if held_out not in yardstick:
        distance = neighbour_distance(ref, query, layout)
        yardstick[held_out] = (roc_auc_score(is_new, distance), caught_at(distance, is_new))
    config = TrainConfig(seed=seed) if epochs is None else TrainConfig(epochs=epochs, min_epochs=epochs, seed=seed)
    model = train(ref, layout, resolve_hierarchy("pbmc-sorted"), LABEL, config, progress=False)
    out = annotate_adata(query, [model], AnnotateOptions(progress=False))
    flagged = out.obs["cellpix_is_novel"].to_numpy()
    by_cluster = out.obs["cellpix_novelty_reason"].astype(str).str.contains("cluster").to_numpy()
    score = out.obs["cellpix_novelty_score"].to_numpy()
    called = out.obs.loc[is_new, "cellpix_subtype"].astype(str).value_counts(normalize=True)
    row = {"held_out": held_out, "seed": seed, "n_held_out": int(is_new.sum()), "n_known": int((~is_new).sum()),
           "mostly_called": f"{called.index[0]} ({called.iloc[0]:.0%})",
           "flagged_held_out": flagged[is_new].mean(), "flagged_known": flagged[~is_new].mean(),
           "flagged_by_cluster_held_out": by_cluster[is_new].mean(),
           "flagged_by_cluster_known": by_cluster[~is_new].mean(),
           "auroc": roc_auc_score(is_new, score), "caught_at_5pct_known": caught_at(score, is_new),
           "knn_expression_auroc": yardstick[held_out][0], "knn_caught_at_5pct_known": yardstick[held_out][1],
           "epochs": model.metadata["training"]["epochs_run"], "precision": out.uns["cellpix"]["precision"]}
    if singler.available():
        reference = raw[ref_rows]
        peer = singler.singler(log_normalised(reference), labels[ref_rows], log_normalised(query),
                               list(reference.var["gene_symbol"].astype(str)))
        row.update({"singler_pruned_held_out": peer.pruned[is_new].mean(),
                    "singler_pruned_known": peer.pruned[~is_new].mean(),
                    "singler_auroc": roc_auc_score(is_new, -peer.delta)})
    return row


def run(quick: bool = False, epochs: int | None = None,
        on_row: Callable[[pd.DataFrame], Any] | None = None) -> pd.DataFrame:
    """Every subtype × seed with the default schedule; ``quick``: two subtypes, one seed, 2,000 genes, 4 epochs."""
    raw = ad.read_h5ad(require(ZHENG))
    subtypes, seeds = (SUBTYPES[:1] + SUBTYPES[-1:], SEEDS[:1]) if quick else (SUBTYPES, SEEDS)
    n_genes, epochs = (2000, epochs or 4) if quick else (5000, epochs)
    rows: list[dict[str, Any]] = []
    yardstick: dict[str, tuple[float, float]] = {}
    for held_out in subtypes:
        for seed in seeds:
            rows.append(held_out_row(raw, held_out, seed, epochs, n_genes, yardstick))
            print(f"{held_out} seed {seed}: flagged {rows[-1]['flagged_held_out']:.1%} vs "
                  f"{rows[-1]['flagged_known']:.1%}, AUROC {rows[-1]['auroc']:.3f}", flush=True)
            if on_row:
                on_row(pd.DataFrame(rows))
    return pd.DataFrame(rows)
