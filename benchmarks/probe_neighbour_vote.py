"""Probe: a vote among each cell's nearest query cells, against the vote of its whole cluster.

``python -m benchmarks.probe_neighbour_vote [--holdouts ...] [--seed 0]``: for each setting of
:mod:`benchmarks.unseen` (the default model trained through the public API on every Zheng cell but one lineage, or
all cells), annotate pbmc68k_reduced and Kang 2018 control and stimulated once, then score on the known cells the
lineage accuracy of

- each cell's own call (``accuracy_cell``);
- the shipped cluster consensus, the majority call of the cell's Leiden cluster (``accuracy_consensus``);
- the majority call of the cell and its k - 1 nearest query cells, in the principal components the clusters were
  found in (``X_cellpix_pca``), for k = 15, 30 and 50 (``accuracy_neighbours_<k>``): the smoothing that kNN-based
  label transfer uses.

Why: on pbmc68k_reduced the consensus trails SingleR by two cells, and its errors are clusters' minorities (T cells
in the NK cluster, monocytes in the dendritic cluster). A vote among a cell's own neighbours would let a minority
that sits together keep its call, where a cluster's vote relabels it. Writes
``benchmarks/results/probe_neighbour_vote.csv``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np

from benchmarks.accuracy import lineage
from benchmarks.probe_support import annotated_settings, over_settings

NEIGHBOURS = (15, 30, 50)


def neighbour_vote(calls: np.ndarray, coords: np.ndarray, k: int) -> np.ndarray:
    """Each cell's most frequent call among itself and its k - 1 nearest cells (exact, Euclidean)."""
    from cellpix.core.neighbours import nearest

    indices, _ = nearest(coords, k)
    names, codes = np.unique(calls, return_inverse=True)
    votes = np.zeros((len(calls), len(names)), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(calls)), indices.shape[1]), codes[indices].ravel()), 1)
    return names[votes.argmax(axis=1)]


def accuracies(annotated: ad.AnnData, known: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    obs = annotated.obs
    cell = lineage(obs["cellpix_subtype"].astype(str).to_numpy())
    cluster = lineage(obs["cellpix_consensus_subtype"].astype(str).to_numpy())
    row = {"accuracy_cell": float((cell[known] == truth[known]).mean()),
           "accuracy_consensus": float((cluster[known] == truth[known]).mean())}
    coords = np.asarray(annotated.obsm["X_cellpix_pca"], dtype=np.float32)
    for k in NEIGHBOURS:
        voted = neighbour_vote(cell, coords, k)
        row[f"accuracy_neighbours_{k}"] = float((voted[known] == truth[known]).mean())
    return row


def rows_for(held: str | None, raw: ad.AnnData, seed: int) -> list[dict]:
    rows = []
    for query, annotated, _, _, known, truth in annotated_settings(held, raw, seed):
        row = {"held_out": held or "none", "query": query.name, **accuracies(annotated, known, truth)}
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    over_settings("python -m benchmarks.probe_neighbour_vote", __doc__.split("\n\n")[0], rows_for,
                  "probe_neighbour_vote.csv", argv)


if __name__ == "__main__":
    main()
